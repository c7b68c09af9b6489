"""The bench's one-line verdicts, per model and (scenario, batch size): the fastest accurate ONNX Runtime
backend against the fastest accurate PyTorch backend (the headline: ORT against PyTorch's best path,
not its weakest; OpenVINO is a third runtime, never counted as PyTorch, with a line of its own where
it ran), ORT int8 against ORT fp32 (int8's gain inside one runtime, as peers report it) and
ORT int8 against torch eager fp32 (the old headline, kept for continuity).

"Accurate" is the bench's accuracy gate (accuracy_pass); a pass whose bootstrap interval straddles
the target is still accurate, and the line says it is marginal. Every ratio is paired by round
(stats.paired_ratio_ci): offline compares samples/s, single-stream and server compare p50 latency
(as a speed-up: how many times shorter). Reads bench.json records (through harness.bench_fields), so
the report can call it on any bench file; torch-free.
"""
from __future__ import annotations

from harness import bench_fields as bf
from harness.bench import stats
from harness.bench.config import REFERENCE

ORT_INT8, ORT_FP32 = "ort-int8", "ort-fp32"


RUNTIMES = {"ort-": "ONNX Runtime", "torch-": "PyTorch", "openvino-": "OpenVINO"}  # the registry's naming rule


def family(backend: str) -> str:
    """The runtime a backend runs on, from its name's prefix: 'ONNX Runtime', 'PyTorch', 'OpenVINO'."""
    return next((name for prefix, name in RUNTIMES.items() if backend.startswith(prefix)), "other")


def _measure(scenario: str) -> str:
    return "samples/s" if scenario == "offline" else "p50 latency"


def _speed(r: dict) -> float | None:
    """Higher is faster: median samples/s (offline) or 1 / median p50 (latency scenarios)."""
    if r["scenario"] == "offline":
        return bf.value(r, "samples_per_s")
    p50 = bf.value(r, "p50")
    return 1.0 / p50 if p50 else None


def ratio(a: dict | None, b: dict | None) -> dict | None:
    """How many times faster a is than b, paired by round, with its interval (None if either is missing)."""
    if a is None or b is None:
        return None
    if a["scenario"] == "offline":
        return stats.paired_ratio_ci(a.get("rounds_samples_per_s") or [], b.get("rounds_samples_per_s") or [])
    return stats.paired_ratio_ci(b.get("rounds_p50_ms") or [], a.get("rounds_p50_ms") or [])


def _fastest(records: list[dict]) -> dict | None:
    timed = [r for r in records if _speed(r) is not None]
    return max(timed, key=_speed, default=None)


def verdicts(records: list[dict]) -> list[dict]:
    """One verdict per (run, scenario, batch size) among aggregate records (rank None)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if isinstance(r, dict) and r.get("rank") is None and r.get("backend"):
            groups.setdefault((r["run"], r["scenario"], r["batch_size"]), []).append(r)
    out = []
    for (run, scenario, bs), rs in groups.items():
        by_name = {r["backend"]: r for r in rs}
        accurate = [r for r in rs if bf.accuracy(r)["pass"] is True]
        best_ort = _fastest([r for r in accurate if family(r["backend"]) == "ONNX Runtime"])
        best_torch = _fastest([r for r in accurate if family(r["backend"]) == "PyTorch"])
        best_ov = _fastest([r for r in accurate if family(r["backend"]) == "OpenVINO"])
        v = {"run": run, "experiment": rs[0].get("experiment"), "scenario": scenario, "batch_size": bs,
             "measure": _measure(scenario),
             "best_ort": best_ort and best_ort["backend"], "best_torch": best_torch and best_torch["backend"],
             "ort_vs_torch": ratio(best_ort, best_torch),
             "best_openvino": best_ov and best_ov["backend"], "ort_vs_openvino": ratio(best_ort, best_ov),
             "int8_vs_fp32": ratio(by_name.get(ORT_INT8), by_name.get(ORT_FP32)),
             "int8_vs_eager": ratio(by_name.get(ORT_INT8), by_name.get(REFERENCE)),
             "not_accurate": sorted(r["backend"] for r in rs if bf.accuracy(r)["pass"] is False),
             "marginal": sorted(r["backend"] for r in rs if bf.accuracy(r)["marginal"])}
        v["text"] = verdict_line(v)
        out.append(v)
    return out


def _x(r: dict | None) -> str:
    if not r:
        return "-"
    sig = lambda x: f"{x:.2g}" if x < 10 else f"{x:.0f}"  # noqa: E731 - two significant figures
    return f"{sig(r['median'])}x [{sig(r['lo'])}-{sig(r['hi'])}]"


def _cov(v: dict) -> str:
    r = next((v[k] for k in ("ort_vs_torch", "int8_vs_fp32", "int8_vs_eager") if v.get(k)), None)
    return "" if r is None else f" ({r['coverage']:.1%} intervals, paired over {r['n']} rounds)"


def verdict_line(v: dict) -> str:
    """'tiny-unet offline bs8 (samples/s): fastest accurate ORT ort-int8 vs fastest accurate PyTorch
    torch-int8 1.3x [1.2-1.4]; ort-int8 vs ort-fp32 1.9x [...]; ort-int8 vs torch-eager fp32 3.2x [...]'."""
    head = f"{v['run']} {v['scenario']} bs{v['batch_size']} ({v['measure']}): "
    if v["best_ort"] and v["best_torch"]:
        first = (f"fastest accurate ORT {v['best_ort']} vs fastest accurate PyTorch {v['best_torch']} "
                 f"{_x(v['ort_vs_torch'])}")
    else:
        missing = " and ".join(k for k, n in (("ONNX Runtime", v["best_ort"]), ("PyTorch", v["best_torch"])) if not n)
        first = f"no accurate {missing} backend measured"
    parts = [first]
    if v.get("ort_vs_openvino"):
        parts.append(f"{v['best_ort']} vs fastest accurate OpenVINO {v['best_openvino']} {_x(v['ort_vs_openvino'])}")
    if v["int8_vs_fp32"]:
        parts.append(f"{ORT_INT8} vs {ORT_FP32} {_x(v['int8_vs_fp32'])}")
    if v["int8_vs_eager"]:
        parts.append(f"{ORT_INT8} vs {REFERENCE} fp32 {_x(v['int8_vs_eager'])}")
    tail = ""
    if v["not_accurate"]:
        tail += f"; failed the accuracy gate: {', '.join(v['not_accurate'])}"
    if v["marginal"]:
        tail += f"; marginal accuracy: {', '.join(v['marginal'])}"
    return head + "; ".join(parts) + _cov(v) + tail


def format_verdicts(vs: list[dict]) -> str:
    return "\n".join(["verdicts (x = times faster):", *(f"  {v['text']}" for v in vs)]) if vs else ""
