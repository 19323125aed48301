"""Imports every stdlib family so their components register. The registry loads this once."""
from decspec.stdlib import models as _models  # noqa: F401
from decspec.stdlib import samplers as _samplers  # noqa: F401
from decspec.stdlib import drafts as _drafts  # noqa: F401
from decspec.stdlib import recycling as _recycling  # noqa: F401  (token recycling: drafts with cross-round state)
from decspec.stdlib import lookahead as _lookahead  # noqa: F401  (lookahead decoding: Jacobi window and n-gram pool)
from decspec.stdlib import exits as _exits  # noqa: F401
from decspec.stdlib import speculation_length as _speculation_length  # noqa: F401  (cross-round exits)
from decspec.stdlib import predictors as _predictors  # noqa: F401  (predicted exit)
from decspec.stdlib import verifiers as _verifiers  # noqa: F401
from decspec.stdlib import structured as _structured  # noqa: F401
from decspec.stdlib import lossy as _lossy  # noqa: F401
from decspec.stdlib import selfspec as _selfspec  # noqa: F401
from decspec.stdlib import heads as _heads  # noqa: F401
from decspec.stdlib import eagle as _eagle  # noqa: F401
from decspec.stdlib import trees as _trees  # noqa: F401  (token trees: tree, multi_rejection)
from decspec.stdlib import sequoia as _sequoia  # noqa: F401  (Sequoia's optimal static tree)
from decspec.stdlib import eagle2 as _eagle2  # noqa: F401  (EAGLE-2's reranked dynamic tree)
from decspec.stdlib import search as _search  # noqa: F401  (beam search: the `search` slot)
from decspec.stdlib import dynamic_exit as _dynamic_exit  # noqa: F401  (a draft layer chosen per context)
from decspec.stdlib import staged as _staged  # noqa: F401  (staged drafting)
from decspec.stdlib import combine as _combine  # noqa: F401  (decoding that combines distributions: contrastive, DoLa)
from decspec.stdlib import diffusion as _diffusion  # noqa: F401  (masked-diffusion decoding: the `denoise` slot)
