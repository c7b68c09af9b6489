"""The one reader of bench.json's record fields: `segvae compare`, the W&B bench log, the report's
bench tables and the bench's own printed table read records through it. Reads schema v1 (point
figures) and v2 (medians with intervals: `samples_per_s_ci: [lo, hi]`, `latency_ms_ci: {p50: [lo,
hi], ...}`, their true coverage `ci_coverage`; `accuracy_count`, `accuracy_pass` / `accuracy_gate`,
`stable` / `unstable_reasons` (written as `valid` / `invalid_reasons` before the LoadGen verdict was
split off), `loadgen_valid`), so a field renamed in the schema is changed here only. A few other
spellings of the intervals are accepted too.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.io import read_json

LATENCY = ("p50", "p90", "p99")


def load(path: str | Path, what: str = "bench results") -> dict:
    """bench.json as a dict; UserError naming the file when it is missing, not JSON or not a bench file."""
    try:
        doc = read_json(path, what)
    except OSError as e:  # a folder, no permission, ...
        raise UserError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise UserError(f"{what} {path} is not a bench.json: expected a JSON object with a 'results' list "
                        f"(written by `segvae bench`)")
    if any(not isinstance(r, dict) for r in doc["results"]):
        raise UserError(f"{what} {path}: every entry of 'results' must be a JSON object")
    return doc


def version(doc: dict) -> int | None:
    v = doc.get("version")
    return v if isinstance(v, int) else None


def whole_job(doc: dict) -> list[dict]:
    """One record per configuration for the whole machine (rank null; v1 files may omit rank)."""
    return [r for r in doc.get("results") or [] if isinstance(r, dict) and r.get("rank") is None]


def num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _pair(v) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = num(v[0]), num(v[1])
        if lo is not None and hi is not None:
            return (min(lo, hi), max(lo, hi))
    if isinstance(v, dict):  # {"lo": .., "hi": ..}
        return _pair([v.get("lo"), v.get("hi")])
    return None


def value(rec: dict, metric: str) -> float | None:
    """samples_per_s or a latency percentile in ms (the median over repeats in v2)."""
    if metric == "samples_per_s":
        return num(rec.get("samples_per_s"))
    lat = rec.get("latency_ms")
    v = num(lat.get(metric)) if isinstance(lat, dict) else None
    return v if v is not None else num(rec.get(f"{metric}_ms"))


def interval(rec: dict, metric: str) -> tuple[float, float] | None:
    """The interval of value(rec, metric) (its coverage: `coverage(rec)`), or None (schema v1, or not measured)."""
    if metric == "samples_per_s":
        return _pair(rec.get("samples_per_s_ci"))
    lat, lat_ci = rec.get("latency_ms"), rec.get("latency_ms_ci")
    for cand in ((lat or {}).get(f"{metric}_ci") if isinstance(lat, dict) else None,
                 (lat_ci or {}).get(metric) if isinstance(lat_ci, dict) else None,
                 rec.get(f"{metric}_ms_ci")):
        iv = _pair(cand)
        if iv is not None:
            return iv
    return None


def accuracy(rec: dict, doc: dict | None = None) -> dict:
    """{"value", "metric", "count", "pass", "marginal", "ratio_ci"}: higher is better (marginal: the gate's
    bootstrap interval of the ratio straddles the target). An `accuracy` field if the schema has
    one, else Dice (segmentation) or the judge's label-swap success (cvae, when judged)."""
    gate = rec.get("accuracy_gate")
    metric = rec.get("accuracy_metric") or (gate.get("metric") if isinstance(gate, dict) else None)
    v = num(rec.get("accuracy"))
    if v is None:  # v1 and v2 carry the metric itself: Dice (segmentation), judge success (cvae)
        v, metric = (num(rec.get("judge_acc")), "judge acc") if rec.get("task") == "cvae" else \
            (num(rec.get("dice")), "Dice")
    elif not isinstance(metric, str):
        metric = "judge acc" if rec.get("task") == "cvae" else "Dice"
    count = rec.get("accuracy_count")
    if not isinstance(count, int) and doc is not None:
        used = ((doc.get("config") or {}).get("accuracy_samples_used") or {})
        count = used.get(rec.get("run")) if isinstance(used, dict) else None
    passed = rec.get("accuracy_pass")
    return {"value": v, "metric": metric, "count": count if isinstance(count, int) else None,
            "pass": passed if isinstance(passed, bool) else None,
            "marginal": bool(gate.get("marginal")) if isinstance(gate, dict) else False,
            "ratio_ci": gate.get("ratio_ci") if isinstance(gate, dict) else None}


def stability(rec: dict) -> tuple[bool | None, list[str]]:
    """(stable, reasons): v2's verdict on the measurement itself (our minimum counts met); older v2
    files call it `valid` / `invalid_reasons`; (None, []) in v1."""
    ok = rec.get("stable", rec.get("valid"))
    reasons = rec.get("unstable_reasons", rec.get("invalid_reasons"))
    reasons = [str(x) for x in reasons] if isinstance(reasons, list) else ([str(reasons)] if reasons else [])
    return (ok if isinstance(ok, bool) else None), reasons


def loadgen_valid(rec: dict) -> bool | None:
    """Whether MLPerf LoadGen would accept the record (None: not recorded, files before the split)."""
    ok = rec.get("loadgen_valid")
    return ok if isinstance(ok, bool) else None


def coverage(rec: dict) -> float | None:
    """The true coverage of the record's intervals (`ci_coverage`), or None when not recorded."""
    c = num(rec.get("ci_coverage"))
    return c if c is not None and 0 < c <= 1 else None


def experiment(rec: dict) -> str:
    return str(rec.get("experiment") or rec.get("run") or "?")


def backend(rec: dict) -> str:
    return str(rec.get("backend") or "?")


def key(rec: dict) -> tuple[str, str, str, int]:
    """(experiment, backend, scenario, batch size): what `segvae compare` matches across two files."""
    bs = rec.get("batch_size")
    return (experiment(rec), backend(rec), str(rec.get("scenario") or "?"), int(bs) if isinstance(bs, int) else 1)


def env(doc: dict) -> dict[str, Any]:
    e = doc.get("env")
    return e if isinstance(e, dict) else {}
