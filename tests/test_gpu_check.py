"""benchmarks/gpu_check.py (the GPU check a session with a lent GPU runs) and what it relies on: the runtime puts
every buffer on the models' device, refuses models on different devices, and checks backend options by name.
Here it runs its CPU self-test (tiny models, dynamo's eager backend): the checks, not the figures."""
import json

import pytest
import torch

import decspec
from benchmarks import gpu_check
from decspec.backends.arguments import model_device, models_device
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.models.views import EarlyExit


def test_self_test_compiles_one_graph_without_recompiles(tmp_path):
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--dynamo-backend", "eager", "--mode", "default", "--specs",
                         "autoregressive", "--new-tokens", "6", "--repeats", "1", "--out", str(out)])
    row, = json.loads(out.read_text())["rows"]
    assert rc == 0 and "error" not in row
    assert (row["graphs"], row["graph_breaks"], row["recompiles"]) == (1, 0, 0)
    assert row["model_calls"]["target"] >= 6


def test_without_cuda_it_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main(["--specs", "autoregressive"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_model_device_is_found_through_views_and_tables():
    target = random_models(0)["target"]
    assert model_device(target) == torch.device("cpu")
    assert model_device(EarlyExit(target, 1)) == torch.device("cpu")
    assert model_device(TableModel.random(8, 1, seed=0)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_models_on_different_devices_are_refused():
    with pytest.raises(DecError, match="different devices.*target: cpu, draft: meta"):
        models_device({"target": random_models(0)["target"], "draft": torch.nn.Linear(2, 2, device="meta")})


@pytest.mark.parametrize("backend, options, message", [
    ("eager", {"compile": True}, "the eager backend has no option 'compile'; it takes no options"),
    ("inductor", {"compiled": True}, "no option 'compiled'; it takes 'compile', 'mode'"),
])
def test_unknown_backend_options_are_named(backend, options, message):
    with pytest.raises(DecError, match=message):
        decspec.compile("specs/autoregressive.dec", models=random_models(0), backend=backend, backend_options=options)
    dec = decspec.compile("specs/autoregressive.dec", models=random_models(0), backend="inductor")
    dec.backend_options = {"compile": True, "bogus": 1}  # set after construction: refused at the first generate
    with pytest.raises(DecError, match="no option 'bogus'"):
        dec.generate([[1, 2]], max_new_tokens=1)
