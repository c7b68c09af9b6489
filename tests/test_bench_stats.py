"""The bench's pure pieces: estimators (coverage on simulated noise with a known truth), LoadGen's
percentile and early-stopping counts, the stratified subset, device resolution."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.bench import stats
from harness.bench.accuracy import stratified_indices
from harness.bench.device import Device, resolve_device


# ---------------------------------------------------------------------------- LoadGen
def test_loadgen_min_queries_match_the_published_table():
    assert stats.min_queries(0.90, 1) == 64
    assert stats.min_queries(0.99, 1) == 662   # MultiStream's min_query_count in mlperf.conf
    assert stats.min_queries(0.99, 0) == 459
    # more queries over the bound need more queries in all
    assert stats.min_queries(0.90, 0) < 64 < stats.min_queries(0.90, 2)


def test_loadgen_percentile_is_the_order_statistic_without_interpolation():
    v = [7.0, 1.0, 5.0, 3.0, 9.0, 2.0, 8.0, 4.0, 6.0, 10.0]  # sorted: 1..10
    assert stats.loadgen_percentile(v, 0.5) == 6.0    # index floor(10 * 0.5) = 5 -> 6 (numpy: 5.5)
    assert stats.loadgen_percentile(v, 0.9) == 10.0   # index 9 -> 10 (numpy: 9.1)
    assert stats.loadgen_percentile(v, 0.99) == 10.0  # index floor(9.9) = 9
    assert stats.loadgen_percentile(list(range(1, 101)), 0.99) == 100.0  # index 99
    assert stats.loadgen_percentile(list(range(1, 101)), 0.90) == 91.0   # index 90
    assert stats.loadgen_percentile([], 0.5) is None


def test_early_stopping_estimate():
    values = list(range(1, 101))  # 100 queries: p90 allows t = 3 (64, 81, 97 queries for t = 1, 2, 3; 113 for 4)
    assert [stats.min_queries(0.9, t) for t in (1, 2, 3, 4)] == [64, 81, 97, 113]
    assert stats.early_stopping_percentile(values, 0.9) == (98.0, 3)  # the 2 highest dropped, then the highest
    assert stats.early_stopping_percentile(list(range(400)), 0.99) == (None, None)  # < 459


# ---------------------------------------------------------------------------- confidence intervals
def test_median_ci_order_statistics():
    c = stats.median_ci([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (c["median"], c["lo"], c["hi"]) == (3.0, 1.0, 5.0)  # 5 rounds: [min, max]
    assert c["coverage"] == pytest.approx(1 - 2 / 32)           # 93.75%, not called 95%
    c = stats.median_ci(list(range(10)))
    assert (c["lo"], c["hi"]) == (1.0, 8.0) and c["coverage"] == pytest.approx(1 - 2 * 11 / 1024)
    assert stats.median_ci([]) is None


@pytest.mark.parametrize("rounds,dist", [(5, "lognormal"), (10, "exponential")])
def test_paired_ratio_ci_coverage_on_simulated_noise(rounds, dist):
    """2,000 simulated benches with a known true speed-up: the interval holds it as often as the
    stated coverage says (binomial band of +-3.5 sd for 2,000 trials)."""
    rng = np.random.default_rng(1234)
    true_ratio, hits, n = 3.9, 0, 2000
    for _ in range(n):
        drift = np.exp(rng.normal(0, 0.15, rounds))          # a noisy minute hits both backends alike
        if dist == "lognormal":
            a = 100 * true_ratio * drift * np.exp(rng.normal(0, 0.05, rounds))
            b = 100 * drift * np.exp(rng.normal(0, 0.05, rounds))
        else:  # skewed, heavy right tail: the interval is distribution-free
            noise = rng.exponential(1.0, (2, rounds)) - math.log(2)  # median 0
            a = 100 * true_ratio * drift * np.exp(0.05 * noise[0])
            b = 100 * drift * np.exp(0.05 * noise[1])
        c = stats.paired_ratio_ci(a, b)
        hits += c["lo"] <= true_ratio <= c["hi"]
    coverage = stats.median_ci(range(rounds))["coverage"]
    sd = math.sqrt(coverage * (1 - coverage) / n)
    assert abs(hits / n - coverage) <= 3.5 * sd, (hits / n, coverage)
    assert coverage >= (0.93 if rounds == 5 else 0.95)


def test_median_ci_coverage_for_throughput():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(2000):
        x = 93.6 * np.exp(rng.normal(0, 0.1, 8))  # true median 93.6
        c = stats.median_ci(x)
        hits += c["lo"] <= 93.6 <= c["hi"]
    cov = stats.median_ci(range(8))["coverage"]
    assert cov >= 0.95 and abs(hits / 2000 - cov) <= 3.5 * math.sqrt(cov * (1 - cov) / 2000)


# ---------------------------------------------------------------------------- subset
def test_stratified_subset_keeps_class_proportions():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)  # in list order, like the pets list file
    idx = stratified_indices(labels, 10, seed=0)
    assert len(idx) == 10 and len(set(idx)) == 10
    assert np.bincount(labels[idx], minlength=3).tolist() == [5, 3, 2]
    # one per class first; the other 4 by largest remainder of 4 x (49, 29, 19) / 97 = 2.02, 1.20, 0.78
    idx = stratified_indices(labels, 7, seed=0)
    assert np.bincount(labels[idx], minlength=3).tolist() == [3, 2, 2]
    # a class of 1 in 51 still gets its item once n reaches the number of classes
    rare = np.array([0] * 50 + [1])
    assert 50 in stratified_indices(rare, 2, seed=0)
    assert stratified_indices(labels, 7, seed=0).tolist() == idx.tolist()        # seeded
    assert stratified_indices(labels, 7, seed=1).tolist() != idx.tolist()
    assert stratified_indices(labels, None, seed=0).tolist() == list(range(100))  # whole split
    # the first N in list order would be one class only; the subset covers all three
    assert set(labels[:10]) == {0} and set(labels[stratified_indices(labels, 10, 0)]) == {0, 1, 2}


def test_pet_breeds_are_the_class(data_root):
    from harness.bench.accuracy import class_labels
    from harness.config import get_experiment
    from harness.data import build_splits

    test = build_splits(get_experiment("unet-mp-tr-bce").replace(image_size=32), data_root)["test"]
    labels = class_labels(test)
    breeds = [n.rsplit("_", 1)[0] for n in test.names]
    assert len(set(labels.tolist())) == len(set(breeds)) >= 2
    assert all((labels[i] == labels[j]) == (breeds[i] == breeds[j]) for i in range(len(breeds)) for j in range(len(breeds)))


# ---------------------------------------------------------------------------- device
def test_device_resolution():
    assert resolve_device("auto", False, 0, local_rank=3) == Device("cpu", None)
    assert resolve_device(None, True, 4, local_rank=2) == Device("cuda", 2)     # accelerate's local rank
    assert resolve_device("auto", True, 2, local_rank=3) == Device("cuda", 1)   # wraps over visible GPUs
    assert resolve_device("cuda", True, 8, local_rank=5).torch == "cuda:5"
    assert resolve_device("cuda:1", True, 2) == Device("cuda", 1)
    assert resolve_device("cpu", True, 8) == Device("cpu", None)
    with pytest.raises(ValueError, match="cuda:2"):
        resolve_device("cuda:2", True, 2)
    with pytest.raises(ValueError, match="is_available"):
        resolve_device("cuda", False, 0)
    with pytest.raises(ValueError, match="expected auto"):
        resolve_device("tpu", True, 1)


def test_detect_device_under_accelerate(monkeypatch):
    import torch

    from harness.bench.device import detect_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert detect_device("auto") == Device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_device("auto") == Device("cpu", None)


def test_early_stopping_bisection_equals_the_scan_it_replaces():
    """min_queries and early_stopping_percentile search by bisection; check them against the plain
    scans of the definition (h = 1, 2, ...; t = 0, 1, ...) on small cases."""
    import numpy as np

    from harness.bench import stats

    def scan_min(p, t):
        h = 1
        while stats._binom_tail_ge(h + t, p, h) > 0.01:
            h += 1
        return h + t

    for p in (0.5, 0.9, 0.99):
        for t in (0, 1, 2, 5, 17, 40):
            assert stats.min_queries(p, t) == scan_min(p, t), (p, t)
    rng = np.random.default_rng(0)
    for n in (10, 63, 64, 100, 300, 700):
        values = rng.random(n)
        for p in (0.5, 0.9, 0.99):
            if n < scan_min(p, 0):
                assert stats.early_stopping_percentile(values, p) == (None, None)
                continue
            t = 0
            while scan_min(p, t + 1) <= n:
                t += 1
            assert stats.early_stopping_percentile(values, p) == (float(np.sort(values)[n - max(t, 1)]), t)
