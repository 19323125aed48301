"""Model pairs for when the caller names none: the shipped, trained reference pair, and a small random pair for tests."""
from __future__ import annotations

from decspec.stdlib.models.protocol import Model
from decspec.stdlib.models.transformer import Transformer, TransformerConfig

TARGET = TransformerConfig(
    vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
)
DRAFT = TransformerConfig(
    vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
)


def default_models() -> dict[str, Model]:
    """The shipped, trained pair (see `decspec.stdlib.models.pretrained.reference_models`)."""
    from decspec.stdlib.models.pretrained import reference_models

    return reference_models()


def random_models(seed: int = 0) -> dict[str, Model]:
    """Random-init `"target"` (4 layers, hidden 128) and `"draft"` (1 layer, hidden 64) over one 512-token vocabulary.

    For tests that need a transformer pair but no language: the weights are random (HF-style
    normal(0, 0.02) init), so the logits are nearly flat. eos_token_id is None; no tokenizer.

    >>> models = random_models(seed=0)
    >>> models["target"].vocab_size == models["draft"].vocab_size == 512
    True
    """
    return {"target": Transformer.random(TARGET, seed), "draft": Transformer.random(DRAFT, seed + 1)}
