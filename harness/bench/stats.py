"""Estimators of the bench, pure (numpy and math only), so that their coverage can be tested.

- `loadgen_percentile`: MLPerf LoadGen's percentile, the sorted latencies at 0-based index
  floor(n * p) (no interpolation).
- `min_queries(p, t)`: LoadGen's early-stopping minimum query count at 99% confidence: n = h + t
  where h is the smallest integer with P(Binomial(h + t, p) >= h) <= 1 - c (= I_p(h, t + 1)).
  64 for p90 with t=1, 662 for p99 with t=1, 459 for p99 with t=0.
- `median_ci(x)`: a distribution-free confidence interval for the median of the per-round values
  from order statistics: [x_(k), x_(n+1-k)] (1-based) has coverage 1 - 2 P(Binomial(n, 1/2) <= k-1)
  for any continuous distribution of independent rounds. k is the largest with coverage >= 95%;
  when no k reaches it (n <= 5) the interval is [min, max] and its TRUE coverage (93.75% for 5
  rounds, 87.5% for 4) is returned with it, never called 95%.
- `paired_ratio_ci(a, b)`: speed-up a/b paired by round: the per-round log ratios log(a_i / b_i)
  go through `median_ci` and are exponentiated. Rounds are interleaved across backends, so a slow
  minute of the machine moves a_i and b_i together and cancels in the ratio.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95          # the level the median CIs aim for
MIN_ROUNDS_95 = 6          # the fewest rounds whose median interval covers 95% ([min, max] of 6: 96.9%)


def rounds_in_budget(rounds: int, budget_s: float | None, load_s: float, round_s: float, floor: int) -> int:
    """The rounds that fit a time budget counted from the first load: what is left after `load_s`, in
    rounds of `round_s`, never fewer than `floor` nor more than `rounds` (no budget: `rounds`). The
    bench's RoundBudget asks it after every round; `segvae estimate` before any."""
    if not budget_s:
        return rounds
    return min(rounds, max(floor, int((budget_s - load_s) // round_s)))
EARLY_STOP_CONFIDENCE = 0.99  # LoadGen's early-stopping confidence


def loadgen_percentile(values: Sequence[float], p: float) -> float | None:
    """sorted(values)[floor(n * p)] (clamped to the last), None for no values."""
    a = np.sort(np.asarray(values, dtype=np.float64))
    if a.size == 0:
        return None
    return float(a[min(a.size - 1, int(math.floor(a.size * p)))])


def _binom_tail_ge(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k), summed in log space (exact for the sizes used here)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k, n + 1)]
    m = max(terms)
    return math.exp(m) * sum(math.exp(t - m) for t in terms)


def first_true(lo: int, hi: int, ok) -> int:
    """The smallest x in [lo, hi] with ok(x), for ok monotone (False ... False True ... True); hi if none."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def min_queries(p: float, t: int = 1, confidence: float = EARLY_STOP_CONFIDENCE) -> int:
    """LoadGen early stopping: the fewest queries for which t queries over the reported latency
    still bound the p-th percentile at `confidence` (see module docstring).

    P(Binomial(h + t, p) >= h) falls as h grows (more trials, at most t failures), so h is found by
    bisection: O(t log h) instead of a scan, which matters for the thousands of queries of a fast
    model."""
    if not 0 < p < 1 or t < 0:
        raise ValueError(f"need 0 < p < 1 and t >= 0, got p={p}, t={t}")
    hi = 1
    while _binom_tail_ge(hi + t, p, hi) > 1 - confidence:
        hi *= 2
    return first_true(1, hi, lambda h: _binom_tail_ge(h + t, p, h) <= 1 - confidence) + t


def early_stopping_percentile(values: Sequence[float], p: float,
                              confidence: float = EARLY_STOP_CONFIDENCE) -> tuple[float | None, int | None]:
    """(LoadGen's early-stopping estimate, t): the largest t that len(values) allows, the t-1 highest
    values dropped and the highest of the rest reported; (None, None) when n < min_queries(p, 0).
    min_queries grows with t, so the largest t is found by bisection."""
    n = len(values)
    if n < min_queries(p, 0, confidence):
        return None, None
    t = first_true(0, n, lambda t: min_queries(p, t + 1, confidence) > n)
    a = np.sort(np.asarray(values, dtype=np.float64))
    return float(a[n - max(t, 1)]), t


def order_k(n: int, confidence: float = CONFIDENCE) -> tuple[int, float]:
    """(k, coverage) of the interval [x_(k), x_(n+1-k)]: the largest k whose coverage >= confidence,
    else k = 1 with its coverage. Coverage falls as k grows, so k is found by bisection."""
    def coverage(k: int) -> float:
        return 1.0 - 2.0 * (1.0 - _binom_tail_ge(n, 0.5, k))  # 1 - 2 P(B <= k-1)
    top = (n + 1) // 2
    k = max(1, first_true(1, top + 1, lambda k: coverage(k) < confidence) - 1)
    return k, coverage(k)


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> dict | None:
    """{"median", "lo", "hi", "coverage", "n"}: sample median and the order-statistic interval."""
    a = np.sort(np.asarray([v for v in values if v is not None], dtype=np.float64))
    n = int(a.size)
    if n == 0:
        return None
    if n == 1:
        return {"median": float(a[0]), "lo": float(a[0]), "hi": float(a[0]), "coverage": 0.0, "n": 1}
    k, cov = order_k(n, confidence)
    return {"median": float(np.median(a)), "lo": float(a[k - 1]), "hi": float(a[n - k]), "coverage": cov, "n": n}


def paired_ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict | None:
    """Median and CI of a_i / b_i over paired rounds (geometric: via log ratios)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and x > 0 and y > 0]
    if not pairs:
        return None
    logs = [math.log(x / y) for x, y in pairs]
    ci = median_ci(logs, confidence)
    return {"median": math.exp(ci["median"]), "lo": math.exp(ci["lo"]), "hi": math.exp(ci["hi"]),
            "coverage": ci["coverage"], "n": ci["n"]}
