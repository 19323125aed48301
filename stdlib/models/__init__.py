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
