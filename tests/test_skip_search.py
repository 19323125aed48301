"""The skip-set search scores every prefix of its greedy path with measured agreement and the ideal speedup."""
from __future__ import annotations

import torch

from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.skip_search import ideal_speedup, search_skip_set


def test_path_agreement_and_scores():
    model = random_models(seed=0)["target"]  # 4 layers
    calibration = torch.randint(0, model.vocab_size, (48,), generator=torch.Generator().manual_seed(0))
    report = search_skip_set(model, calibration, k=3)
    assert report.path[0].skip == () and report.path[0].agreement == 1.0
    sizes = [len(c.skip) for c in report.path]
    assert sizes == list(range(len(sizes))) and 0 not in report.path[-1].skip  # one more layer per step; layer 0 kept
    for a, b in zip(report.path, report.path[1:]):
        assert set(a.skip) < set(b.skip) and b.c < a.c  # nested sets, each cheaper
    full = model.forward(calibration[None], model.new_cache(1, 48)).logits[0].argmax(-1)
    for cand in report.path[1:]:  # the agreement is what it says: argmax agreement with the full model
        got = model.forward(calibration[None], model.new_cache(1, 48), skip_layers=cand.skip).logits[0].argmax(-1)
        assert abs(cand.agreement - (got == full).float().mean().item()) < 1e-9
        assert abs(cand.ideal_speedup - ideal_speedup(cand.agreement, 3, cand.c)) < 1e-12
    assert report.best is None or report.best.ideal_speedup > 1.0
    assert "agreement" in report.table()


def test_ideal_speedup_reference_values():
    assert ideal_speedup(1.0, 4, 0.0) == 5.0  # every draft accepted, free drafts: k + 1 tokens per target step
    assert abs(ideal_speedup(0.0, 4, 0.5) - 1 / 3) < 1e-12  # nothing accepted: one token for 3 target steps
    assert abs(ideal_speedup(0.8, 4, 0.1) - (1 - 0.8**5) / 0.2 / 1.4) < 1e-12
