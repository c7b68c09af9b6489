"""MLPerf-style accuracy gate: a shipped graph passes when its metric is at least `target` of the
fp32 reference's (0.99 by default, 0.999 for a strict run), and, for generators, when its outputs
stay within a mean absolute error of the fp32 outputs.

The gates (`accuracy_gate`; `mae_gate` for a generator with no metric to compare) and the target's
default and check are used by `segvae export --quantize int8` and by `segvae bench`, so both say the
same.
"""
from __future__ import annotations

import math

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
