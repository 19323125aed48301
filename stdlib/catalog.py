"""Imports every stdlib family so their components register. The registry loads this once."""
from decspec.stdlib import models as _models  # noqa: F401
from decspec.stdlib import samplers as _samplers  # noqa: F401
from decspec.stdlib import drafts as _drafts  # noqa: F401
from decspec.stdlib import exits as _exits  # noqa: F401
from decspec.stdlib import speculation_length as _speculation_length  # noqa: F401  (cross-round exits)
from decspec.stdlib import predictors as _predictors  # noqa: F401  (predicted exit)
from decspec.stdlib import verifiers as _verifiers  # noqa: F401
from decspec.stdlib import structured as _structured  # noqa: F401
from decspec.stdlib import lossy as _lossy  # noqa: F401
from decspec.stdlib import selfspec as _selfspec  # noqa: F401
from decspec.stdlib import heads as _heads  # noqa: F401
from decspec.stdlib import trees as _trees  # noqa: F401  (token trees: tree, multi_rejection)
