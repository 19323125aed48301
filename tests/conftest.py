"""Hypothesis profiles: "ci" (the default) is derandomized, so the suite is deterministic;
DECSPEC_HYPOTHESIS_PROFILE=dev explores fresh examples on every run.

Under pytest-xdist (the README's `-n 2`) each worker runs torch on one thread: two workers fill two cores."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("DECSPEC_HYPOTHESIS_PROFILE", "ci"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
