"""Imports every stdlib family so their components register. The registry loads this once."""
from decspec.stdlib import models as _models  # noqa: F401
from decspec.stdlib import samplers as _samplers  # noqa: F401
from decspec.stdlib import drafts as _drafts  # noqa: F401
from decspec.stdlib import exits as _exits  # noqa: F401
from decspec.stdlib import verifiers as _verifiers  # noqa: F401
from decspec.stdlib import structured as _structured  # noqa: F401
