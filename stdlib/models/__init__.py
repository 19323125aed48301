"""Models: the protocol, the built-in transformer, table models for tests, and the `model` component."""
from decspec.stdlib.models.protocol import Cache, CacheFull, Model, ModelOutput
from decspec.stdlib.registry import Component, Contract, Param, register

MODEL = register(
    Component(
        kind="model",
        name="model",
        params=(Param("name", "str", doc="the role this model is bound to at compile time (compile(..., name=model))"),),
        doc="A model supplied by the caller: `model(\"target\")` is bound by `decspec.compile(spec, target=...)`.",
        contract=Contract(None, "models carry no sampling contract"),
    )
)

__all__ = ["Cache", "CacheFull", "Model", "ModelOutput", "MODEL"]

from decspec.stdlib.models.default import default_models, random_models  # noqa: E402
from decspec.stdlib.models.table import TableModel  # noqa: E402
from decspec.stdlib.models.transformer import KVCache, Transformer, TransformerConfig  # noqa: E402

__all__ += ["KVCache", "TableModel", "Transformer", "TransformerConfig", "default_models", "random_models"]
