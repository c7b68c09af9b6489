"""The record schema (schema.md, version 2): one flat record per (run, backend, scenario, batch
size[, rank]) built from R interleaved rounds, with medians, confidence intervals (each with its
true coverage), speed-ups against torch eager paired by round, two verdicts on the measurement
(`stable`: our minimum counts met; `loadgen_valid`: what MLPerf LoadGen would accept, only ever
true under --mlperf) and the accuracy gate; and the CLI table."""
from __future__ import annotations

from harness import bench_fields as bf
from harness.bench import stats
from harness.bench.config import MLPERF_MIN_DURATION, MLPERF_OFFLINE_SAMPLES, REFERENCE, TAIL, tail_min_queries
from harness.bench.scenario_base import LATENCY_KEYS, latency_stats
from harness.bench.scenarios import SCENARIOS

SCHEMA_VERSION = 2
RECORD_FIELDS = (
    "run", "experiment", "task", "backend", "precision", "precision_status", "precision_why", "scenario",
    "batch_size", "rounds",
    "samples_per_s", "samples_per_s_ci", "ci_coverage", "rounds_samples_per_s", "rounds_p50_ms",
    "latency_ms", "latency_ms_ci", "latency_pooled_ms",
    "early_stopping_ms", "percentile_ok", "queries", "queries_per_round", "duration_s",
    "speedup", "speedup_p50", "flops_per_sample", "gflops_per_s", "pct_of_peak", "peak_rss_mb",
    "peak_rss_serving_mb", "accuracy_inputs_mb", "torch_in_process", "model_bytes", "model_file", "model_sha256", "export_config_hash", "run_config_hash",
    "threads", "isolated", "worker_pids", "device", "form", "graph_rewrites", "timing_includes_h2d", "h2d_ms", "compile_s",
    "dice", "iou", "dice_delta", "max_abs_err", "mean_abs_err", "judge_acc", "accuracy_count",
    "accuracy_subset", "accuracy_pass", "accuracy_gate", "stable", "unstable_reasons", "loadgen_valid",
    "loadgen_reasons", "rank", "world_size",
)
SERVER_FIELDS = ("target_rate", "achieved_rate", "latency_bound_ms", "bound_met", "queries_offered",
                 "queries_served", "max_rate", "search_probes")


def _ci(values) -> tuple[float | None, list | None, float | None]:
    c = stats.median_ci(values)
    return (None, None, None) if c is None else (c["median"], [c["lo"], c["hi"]], c["coverage"])


def round_figures(rounds: list[dict]) -> dict:
    """Per-round samples/s and latency stats of one measurement -> medians and CIs."""
    sps = [m["samples"] / m["duration_s"] if m["duration_s"] > 0 else 0.0 for m in rounds]
    lats = [latency_stats(m["latencies_s"]) or {} for m in rounds]
    med, ci, cov = _ci(sps)
    out = {"samples_per_s": med, "samples_per_s_ci": ci, "ci_coverage": cov, "rounds_samples_per_s": sps,
           "rounds_p50_ms": [lat.get("p50") for lat in lats], "latency_ms": {}, "latency_ms_ci": {}}
    for k in LATENCY_KEYS:
        m, c, _ = _ci([lat.get(k) for lat in lats if lat.get(k) is not None])
        out["latency_ms"][k], out["latency_ms_ci"][k] = m, c
    pooled = [x for m in rounds for x in m["latencies_s"]]
    out["latency_pooled_ms"] = latency_stats(pooled)
    per_round = min(len(m["latencies_s"]) for m in rounds)
    out["queries"], out["queries_per_round"] = len(pooled), per_round
    out["duration_s"] = sum(m["duration_s"] for m in rounds)
    out["percentile_ok"] = {k: per_round >= tail_min_queries(k) for k in ("p50", "p90", "p99")}
    return out


def stability(scenario: str, fig: dict, n_rounds: int, cfg, server: dict | None) -> list[str]:
    """Why a record is not `stable` (empty list: stable): every round completed, the scenario's tail
    percentile from at least LoadGen's early-stopping minimum of queries per round (64 for a p90,
    662 for a p99), and a server that met its bound."""
    reasons = []
    if n_rounds < cfg.rounds:
        reasons.append(f"only {n_rounds} of {cfg.rounds} rounds completed")
    tail = TAIL.get(scenario)
    if tail and not fig["percentile_ok"][tail]:
        reasons.append(f"{tail} from {fig['queries_per_round']} queries per round < {tail_min_queries(tail)} "
                       "(LoadGen early stopping, 99% confidence)")
    if server is not None and server.get("bound_met") is False:
        reasons.append(f"server p99 over the {server['latency_bound_ms']:.2f} ms bound (or queries unserved) "
                       "in at least one round")
    return reasons


def loadgen_validity(scenario: str, bs: int, fig: dict, n_rounds: int, cfg, early: dict | None,
                     unstable: list[str]) -> list[str]:
    """Why MLPerf LoadGen would reject the record (empty list: it would accept it): only a --mlperf
    bench can pass (600 s per round, 24,576 samples per offline round), with the early-stopping
    estimate of the tail percentile reported and every stability condition met."""
    reasons = [] if cfg.mlperf else ["not run with --mlperf (LoadGen's durations and counts)"]
    if fig["duration_s"] / max(n_rounds, 1) < MLPERF_MIN_DURATION:
        reasons.append(f"rounds of {fig['duration_s'] / max(n_rounds, 1):.1f} s, shorter than LoadGen's "
                       f"{MLPERF_MIN_DURATION:.0f} s")
    if SCENARIOS[scenario].tail is None and fig["queries_per_round"] * bs < MLPERF_OFFLINE_SAMPLES:
        reasons.append(f"{fig['queries_per_round'] * bs} samples per offline round < LoadGen's {MLPERF_OFFLINE_SAMPLES}")
    tail = TAIL.get(scenario)
    if tail and (early or {}).get(tail) is None:
        reasons.append(f"no early-stopping estimate of {tail} (too few queries)")
    return reasons + unstable


def server_fields(rounds: list[dict], search: dict | None) -> dict:
    ex = [m["extra"] for m in rounds]
    met = [e.get("bound_met") for e in ex]
    return {"target_rate": ex[0]["target_rate"], "achieved_rate": stats.median_ci([e["achieved_rate"] for e in ex])["median"],
            "latency_bound_ms": ex[0]["latency_bound_ms"], "bound_met": None if None in met else all(met),
            "queries_offered": sum(e["queries_offered"] for e in ex), "queries_served": sum(e["queries_served"] for e in ex),
            "max_rate": (search or {}).get("rate"), "search_probes": (search or {}).get("probes")}


def build_record(base: dict, scenario: str, bs: int, rounds: list[dict], cfg, ref_fig: dict | None,
                 search: dict | None, rank=None, peak_g: float | None = None, n_proc: int = 1) -> dict:
    """One record. base: the (run, backend) fields shared by every record (accuracy, provenance...)."""
    fig = round_figures(rounds)
    kind = SCENARIOS[scenario]
    server = server_fields(rounds, search) if kind.paced else None
    unstable = stability(scenario, fig, len(rounds), cfg, server)
    rec = {**base, "scenario": scenario, "batch_size": bs, "rounds": len(rounds),
           **{k: v for k, v in fig.items() if not k.startswith("_")}, "rank": rank}
    if kind.tail:
        tail = kind.tail
        est, t = stats.early_stopping_percentile([x * 1e3 for m in rounds for x in m["latencies_s"]],
                                                 int(tail[1:]) / 100)
        rec["early_stopping_ms"] = {tail: est, "t": t}
    else:
        rec["early_stopping_ms"] = None
    rec["speedup"] = rec["speedup_p50"] = None
    if ref_fig is not None and base["backend"] != REFERENCE:
        if not kind.paced:  # a paced scenario's throughput is the offered rate: compare latency there
            rec["speedup"] = stats.paired_ratio_ci(fig["rounds_samples_per_s"], ref_fig["rounds_samples_per_s"])
        if kind.tail:
            rec["speedup_p50"] = stats.paired_ratio_ci(ref_fig["rounds_p50_ms"], fig["rounds_p50_ms"])
    sps = rec["samples_per_s"]
    rec["gflops_per_s"] = base["flops_per_sample"] * sps / 1e9 if sps is not None else None
    rec["pct_of_peak"] = 100.0 * rec["gflops_per_s"] / (peak_g * n_proc) if peak_g and sps else None
    h2d = [m.get("h2d_ms") for m in rounds if m.get("h2d_ms") is not None]
    rec["h2d_ms"] = stats.median_ci(h2d)["median"] if h2d else None
    rec["timing_includes_h2d"] = False if base["device"] != "cpu" else None
    rec["stable"], rec["unstable_reasons"] = not unstable, unstable
    lg = loadgen_validity(scenario, bs, fig, len(rounds), cfg, rec["early_stopping_ms"], unstable)
    rec["loadgen_valid"], rec["loadgen_reasons"] = not lg, lg
    if server is not None:
        rec.update(server)
    return rec


# --------------------------------------------------------------------------- CLI table
def fmt_ci(v, ci, spec: str = ".1f", unit: str = "") -> str:
    """'93.6 [91.2-95.0] img/s'; '-' when unmeasured."""
    if v is None:
        return "-"
    s = format(v, spec)
    if ci and ci[0] is not None:
        s += f" [{format(ci[0], spec)}-{format(ci[1], spec)}]"
    return s + (f" {unit}" if unit else "")


def _sig(v: float) -> str:
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


def fmt_ratio(r: dict | None) -> str:
    """'3.9x [3.7-4.1]' (two significant figures: the rounds do not support more)."""
    if not r:
        return "-"
    return f"{_sig(r['median'])}x [{_sig(r['lo'])}-{_sig(r['hi'])}]"


def accuracy_text(r: dict) -> str:
    acc = bf.accuracy(r)
    n = acc["count"]
    if r["task"] == "segmentation":
        txt = "-" if r.get("dice") is None else f"dice {r['dice']:.4f}"
    else:
        txt = "-" if r.get("mean_abs_err") is None else f"mae {r['mean_abs_err']:.1e}"
        if r.get("judge_acc") is not None:
            txt += f" judge {r['judge_acc']:.3f}"
    verdict = {True: "pass", False: "FAIL", None: "?"}[acc["pass"]]
    if acc["marginal"]:
        verdict += " marginal"
    return f"{txt} n={n} {verdict}"


def gate_margin_text(gate: dict | None) -> str:
    """'ratio 0.991 [0.987-0.995] (95% paired bootstrap over 8000 images) straddles 0.99: marginal'."""
    ci = (gate or {}).get("ratio_ci")
    if not ci or gate.get("ratio") is None:
        return ""
    where = "straddles" if gate.get("marginal") else ("clears" if ci["lo"] >= gate["target"] else "is below")
    return (f"ratio {gate['ratio']:.4f} [{ci['lo']:.4f}-{ci['hi']:.4f}] ({ci['coverage']:.0%} paired bootstrap over "
            f"{ci['n']} images, seed {ci['seed']}) {where} {gate['target']}" + (": marginal" if gate.get("marginal") else ""))


def verdict_text(r: dict) -> str:
    """'stable' / 'UNSTABLE: why', and ', LoadGen-valid' when LoadGen would accept it."""
    stable, reasons = bf.stability(r)
    return ("stable" if stable else "UNSTABLE: " + "; ".join(reasons)) + (", LoadGen-valid" if bf.loadgen_valid(r) else "")


def coverage_label(cov: float | None) -> str:
    """An interval's name with its own coverage: '96.1% CI', '75% CI' (never 95% below 95%)."""
    if cov is None:
        return "CI"
    pct = 100 * cov
    return f"{pct:.1f}% CI".replace(".0%", "%") if pct < 99.95 else "~100% CI"


def format_table(records: list[dict]) -> str:
    covs = {r["ci_coverage"] for r in records if r.get("ci_coverage")}
    head = coverage_label(covs.pop()) if len(covs) == 1 else "CI"
    cols = [("run", 16), ("backend", 30), ("scenario", 13), ("bs", 3), ("rank", 4), (f"samples/s [{head}]", 22),
            ("vs eager", 15), ("p50 ms", 20), ("p90 ms", 9), ("q/round", 7), ("accuracy", 32), ("verdict", 0)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in cols).rstrip()]
    for r in records:
        p90 = bf.value(r, "p90")
        p90 = "-" if p90 is None else f"{p90:.2f}" + ("" if r["percentile_ok"]["p90"] else "*")
        vals = [r["run"][:16], r["backend"] + (" (emulated)" if r.get("precision_status") == "emulated" else ""),
                r["scenario"], str(r["batch_size"]),
                "all" if r["rank"] is None else str(r["rank"]),
                fmt_ci(bf.value(r, "samples_per_s"), bf.interval(r, "samples_per_s")),
                fmt_ratio(r["speedup"] or r["speedup_p50"]), fmt_ci(bf.value(r, "p50"), bf.interval(r, "p50"), ".2f"),
                p90, str(r["queries_per_round"]), accuracy_text(r), verdict_text(r)]
        lines.append("  ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, cols)).rstrip())
    cov = next((r["ci_coverage"] for r in records if r.get("ci_coverage")), None)
    if cov is not None:
        lines.append(f"intervals: order-statistic CI of the median over rounds, true coverage {cov:.2%}"
                     + (" (95% needs >= 6 rounds)" if cov < 0.95 else "")
                     + "; * = percentile from fewer queries than LoadGen's minimum; stable = our minimum counts "
                       "met; LoadGen-valid only under --mlperf")
    return "\n".join(lines)
