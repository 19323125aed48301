"""decspec: compile declarative decoding specs (.dec) into verified decoders.

    decoder = decspec.compile("specs/speculative.dec", target=target_model, draft=draft_model, k=6)
    result = decoder.generate([[1, 2, 3]], max_new_tokens=32, seed=0)
    result.tokens, result.stats.mean_accepted
"""
from decspec.api import Decoder, compile
from decspec.backends.runtime import Interrupted, Result, Stats
from decspec.dsl.diagnostics import DecError

__all__ = ["compile", "Decoder", "Result", "Stats", "DecError", "Interrupted"]
__version__ = "0.1.0"
