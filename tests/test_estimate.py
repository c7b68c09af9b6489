"""The plan's time estimate: the bench's rounds fitted into its time budget as the bench fits them."""
from __future__ import annotations

import pytest

from harness.bench.stats import MIN_ROUNDS_95
from harness.config import get_experiment
from harness.estimate import Cost, _bench_s, rounds_in_budget


def test_rounds_in_budget_by_hand():
    assert rounds_in_budget(12, None, 50.0, 10.0, 6) == 12          # no budget: the rounds asked for
    assert rounds_in_budget(12, 500.0, 50.0, 10.0, 6) == 12         # 45 fit, 12 asked
    assert rounds_in_budget(12, 130.0, 50.0, 10.0, 6) == 8          # (130 - 50) // 10
    assert rounds_in_budget(12, 60.0, 50.0, 10.0, 6) == 6           # one fits: the floor holds


@pytest.mark.parametrize("runs", [1, 3])
def test_bench_estimate_follows_the_budget_like_the_bench(runs):
    cfg = get_experiment("cvae-mnist")
    costs = {"k": Cost(step_s=0.1, forward_per_sample_s=0.002, forward_bs1_s=0.004)}
    benched = [(cfg, {"test": 1000}, "k")] * runs
    base = {"backends": ["ort-fp32", "ort-int8"], "batch_sizes": [8], "min_duration": 2.0}

    def est(**kw):
        return _bench_s({**base, **kw}, benched, costs)
    named_12, named_floor = est(rounds=12), est(rounds=MIN_ROUNDS_95)
    assert named_floor < named_12
    assert est() == pytest.approx(est(rounds=12, budget_min=1e6))   # a budget 12 rounds fit in: 12
    assert est(budget_min=1e-3) == pytest.approx(named_floor)       # a budget nothing fits in: the floor
    assert est(rounds=12) == named_12 != est(rounds=12, budget_min=0.5)  # --rounds alone: no budget
    mid = est(budget_min=0.5)
    assert named_floor <= mid <= named_12
