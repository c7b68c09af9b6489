"""MLPerf-style accuracy gate: a shipped graph passes when its metric is at least `target` of the
fp32 reference's (0.99 by default, 0.999 for a strict run), and, for generators, when its outputs
stay within a mean absolute error of the fp32 outputs.

The gates (`accuracy_gate`; `mae_gate` for a generator with no metric to compare) and the target's
default and check are used by `segvae export --quantize int8` and by `segvae bench`, so both say the
same.
The bench adds a margin: a paired per-image bootstrap interval of the ratio (paired_bootstrap_ratio);
a verdict whose interval straddles the target is `marginal` (with_margin).
"""
from __future__ import annotations

import math

import numpy as np

from models.errors import UserError

DEFAULT_TARGET = 0.99          # MLPerf: 99% of the fp32 reference (0.999: its "high accuracy" variants)
DEFAULT_MAX_MAE = 0.02         # generators: mean |output - fp32 output| on [0, 1] images


def check_target(target) -> float:
    """The target as given, or a UserError: a fraction of the reference in (0, 1]."""
    if isinstance(target, bool) or not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise UserError(f"invalid accuracy_target={target!r}: expected a fraction in (0, 1], "
                        f"e.g. {DEFAULT_TARGET} (MLPerf) or 0.999 (strict)")
    return target


def accuracy_gate(value: float | None, reference: float | None, target: float = DEFAULT_TARGET,
                  mae: float | None = None, max_mae: float = DEFAULT_MAX_MAE) -> dict:
    """{"pass": bool, "ratio": value / reference, "target": target, "mae", "max_mae", "reasons": [...]}.

    A missing or non-finite value or reference fails with a reason, never passes silently.
    """
    reasons: list[str] = []
    ratio = None
    if value is None or reference is None or not math.isfinite(value) or not math.isfinite(reference):
        reasons.append(f"metric missing (value={value}, reference={reference})")
    elif reference <= 0:
        ratio = None if value < reference else 1.0
        if value < reference:
            reasons.append(f"metric {value:.4f} below the reference {reference:.4f}")
    else:
        ratio = value / reference
        if ratio < target:
            reasons.append(f"metric {value:.4f} is {ratio:.2%} of the fp32 reference {reference:.4f} "
                           f"(needs >= {target:.1%})")
    if mae is not None:
        reasons += _mae_reasons(mae, max_mae)
    return {"pass": not reasons, "ratio": ratio, "target": target, "mae": mae,
            "max_mae": max_mae if mae is not None else None, "reasons": reasons}


def mae_gate(mae: float | None, target: float = DEFAULT_TARGET, max_mae: float = DEFAULT_MAX_MAE) -> dict:
    """The gate of a generator with no metric to compare (no judge): its outputs' mean |error| vs
    the fp32 outputs alone decides; the same keys as accuracy_gate, ratio None."""
    reasons = _mae_reasons(mae, max_mae)
    return {"pass": not reasons, "ratio": None, "target": target, "mae": mae, "max_mae": max_mae,
            "reasons": reasons}


def _mae_reasons(mae: float | None, max_mae: float) -> list[str]:
    if mae is None:
        return ["mean |output - fp32 output| not measured"]
    return [] if math.isfinite(mae) and mae <= max_mae else [f"mean |output - fp32 output| {mae:.4f} above {max_mae}"]


# ---------------------------------------------------------------------------- the margin
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_COVERAGE = 0.95


def paired_bootstrap_ratio(value_parts, reference_parts, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                           coverage: float = BOOTSTRAP_COVERAGE) -> dict | None:
    """Interval of metric(value) / metric(reference) over the images, resampled with replacement and
    the SAME resample on both sides (paired: an image hard for both moves both), percentile method.

    The metric is a ratio of sums over images, given per image as (numerator, denominator) rows:
    dataset Dice is (2 x intersection, predicted + target), an accuracy is (hit, 1). Returns
    {"lo", "hi", "coverage", "resamples", "seed", "n", "method"}, or None without images."""
    a = np.asarray(value_parts, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(reference_parts, dtype=np.float64).reshape(-1, 2)
    n = len(a)
    if n == 0 or a.shape != b.shape:
        return None
    rng = np.random.default_rng(seed)
    ratios = []
    for done in range(0, resamples, 250):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(250, resamples - done)).astype(np.float64)
        sa, sb = w @ a, w @ b
        ma = sa[:, 0] / np.maximum(sa[:, 1], 1e-12)
        mb = sb[:, 0] / np.maximum(sb[:, 1], 1e-12)
        ratios.append(np.where(mb > 0, ma / np.where(mb > 0, mb, 1.0), np.where(ma >= mb, 1.0, 0.0)))
    r = np.concatenate(ratios)
    lo, hi = np.quantile(r, [(1 - coverage) / 2, 1 - (1 - coverage) / 2])
    return {"lo": float(lo), "hi": float(hi), "coverage": coverage, "resamples": int(resamples), "seed": int(seed),
            "n": int(n), "method": "paired percentile bootstrap over images"}


def with_margin(gate: dict, interval: dict | None) -> dict:
    """gate + "ratio_ci" and "marginal": the ratio's interval straddles the target, so the verdict
    (pass or fail, from the point estimate) could flip on another draw of test images."""
    gate["ratio_ci"] = interval
    gate["marginal"] = bool(interval is not None and interval["lo"] < gate["target"] <= interval["hi"])
    return gate
