"""The exact backend: the IR interpreted over probability distributions instead of samples.

Every uniform draw stays symbolic; the op that consumes it splits each row into one row per
outcome, weighted by its probability, and runs its own eager rule there. For small vocabularies
this yields the exact distribution a decoder samples from: `exact_distribution(decoder, prompt,
max_new_tokens)`. As a rule table it also samples, like eager in float64 (`decspec.compile(...,
backend="exact").generate(...)`).
"""
from decspec.backends.exact.distribution import NAME, Distribution, exact_distribution
from decspec.backends.exact.rows import TooLarge
from decspec.backends.exact.rules import RULES

__all__ = ["NAME", "RULES", "Distribution", "TooLarge", "exact_distribution"]
