"""Tables of bench.json: medians with intervals, paired speed-ups, counts and verdicts."""
from __future__ import annotations

from harness import bench_fields as bf
from harness.bench.config import REFERENCE
from harness.bench.records import gate_margin_text
from harness.report.model import DASH, Results, Table, as_number, as_text, dig, fmt, fmt_pct


def _records(res: Results) -> list[dict]:
    # per-rank offline records of a multi-process bench are summed into a rank=None record: keep those
    return bf.whole_job(res.bench or {})


def _label(r: dict) -> str:
    return f"{r.get('backend', '?')} ({r.get('precision', '?')})"


def _single_stream(records: list[dict]) -> list[dict]:
    out: dict[tuple, dict] = {}
    for r in records:
        if r.get("scenario") == "single-stream":
            out.setdefault((r.get("backend"), r.get("precision")), r)
    return list(out.values())


def bench_groups(res: Results) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in _records(res):
        key = str(r.get("experiment") or r.get("run") or "?")
        if r.get("run") and r.get("run") != r.get("experiment"):
            key = f"{key} (run {r['run']})"
        out.setdefault(key, []).append(r)
    return dict(sorted(out.items()))


def _ci_cell(v, ci, digits: int) -> str:
    """'93.6 [91.2-95.0]' for a bench v2 median with its interval; the plain number otherwise."""
    if as_number(v) is None:
        return DASH
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(as_number(x) is not None for x in ci):
        return f"{v:.{digits}f} [{ci[0]:.{digits}f}-{ci[1]:.{digits}f}]"
    return fmt(v, digits)


def _ratio_cell(r) -> str:
    """'3.9× [3.7-4.1]': two significant figures, what a few paired rounds support."""
    if not isinstance(r, dict) or any(as_number(r.get(k)) is None for k in ("median", "lo", "hi")):
        return DASH
    sig = lambda x: f"{x:.2g}" if x < 10 else f"{x:.0f}"  # noqa: E731
    return f"{sig(r['median'])}× [{sig(r['lo'])}-{sig(r['hi'])}]"


def _bench_verdicts(rs: list[dict]) -> tuple[str, str]:
    """(accuracy gate, verdict on the measurement) of one backend's records: pass/FAIL with the
    reason; stable (our minimum counts met) or which scenario is not and why (first reason), plus
    whether MLPerf LoadGen would accept every record."""
    gate = next((r for r in rs if bf.accuracy(r)["pass"] is not None), None)
    acc = DASH if gate is None else ("pass" if bf.accuracy(gate)["pass"] else
                                     "FAIL: " + "; ".join(dig(gate, "accuracy_gate", "reasons") or []))
    if gate is not None and bf.accuracy(gate)["marginal"]:
        acc = f"marginal {acc} ({gate_margin_text(gate['accuracy_gate'])})"
    verdicts = [bf.stability(r) for r in rs]
    if all(ok is None for ok, _ in verdicts):
        return acc, DASH
    flagged = [(r, why) for r, (ok, why) in zip(rs, verdicts) if ok is False]
    lg = [bf.loadgen_valid(r) for r in rs]
    tail = "" if None in lg else (", LoadGen-valid" if all(lg) else ", not LoadGen-valid")
    if not flagged:
        return acc, "stable" + tail
    return acc, "unstable: " + "; ".join(f"{r.get('scenario')} bs{r.get('batch_size')}: {(why or ['?'])[0]}"
                                         for r, why in flagged[:2]) + (f" (+{len(flagged) - 2} more)" if len(flagged) > 2 else "") + tail


def _precision_cell(precision, rs: list[dict]) -> str:
    """"bf16 (emulated)" where the bench recorded that this machine only emulates the precision."""
    status = next((r.get("precision_status") for r in rs if r.get("precision_status")), None)
    return as_text(precision) + (" (emulated)" if status == "emulated" else "")


def bench_table(records: list[dict]) -> Table:
    """One row per (backend, precision): latency, throughput per batch size (medians [interval] over
    rounds for bench v2, the interval's true coverage in the note), % of peak, accuracy with its
    count and gate, speed-ups, stability and LoadGen validity."""
    batch_sizes = sorted({int(r["batch_size"]) for r in records
                          if r.get("scenario") == "offline" and as_number(r.get("batch_size"))})
    by_backend: dict[tuple, list[dict]] = {}
    for r in records:
        by_backend.setdefault((r.get("backend"), r.get("precision")), []).append(r)
    base = by_backend.get((REFERENCE, "fp32")) or next(
        (v for k, v in by_backend.items() if k[0] == REFERENCE), None)
    task = next((r.get("task") for r in records if r.get("task")), None)

    def offline(rs, bs):
        return next((r for r in rs if r.get("scenario") == "offline" and as_number(r.get("batch_size")) == bs), None)

    def best(rs):
        return max((r for r in rs if r.get("scenario") == "offline" and as_number(r.get("samples_per_s")) is not None),
                   key=lambda r: r["samples_per_s"], default=None)

    def ss(rs):
        return next((r for r in rs if r.get("scenario") == "single-stream"), None)

    base_p50 = bf.value(ss(base or []) or {}, "p50")
    base_thr = bf.value(best(base or []) or {}, "samples_per_s")
    serving = any(r.get("peak_rss_serving_mb") is not None for r in records)
    acc_cols = ["Dice", "Dice Δ vs eager"] if task == "segmentation" else ["max |Δ| vs eager", "judge (swap)"]
    cols = (["backend", "precision", "p50 ms", "p90 ms", "p99 ms", "queries/round"]
            + [f"samples/s @bs{b}" for b in batch_sizes]
            + ["best % of peak", *acc_cols, "accuracy n", "accuracy gate", "speed-up p50", "speed-up best throughput",
               "peak RSS MB (serving)" if serving else "peak RSS MB", "verdict"])
    rows = []
    for (backend, precision), rs in by_backend.items():
        s = ss(rs) or {}
        pct = max((p for p in (as_number(r.get("pct_of_peak")) for r in rs) if p is not None), default=None)
        acc = next((r for r in rs if any(r.get(k) is not None for k in
                                         ("dice", "dice_delta", "max_abs_err", "judge_acc"))), {})
        if task == "segmentation":
            acc_vals = [fmt(acc.get("dice"), 4), fmt(acc.get("dice_delta"), 4)]
        else:
            me = as_number(acc.get("max_abs_err"))
            acc_vals = [DASH if me is None else f"{me:.2e}", fmt_pct(acc.get("judge_acc"))]
        p50, top = bf.value(s, "p50"), best(rs) or {}
        if "speedup" in top or "speedup_p50" in s:  # bench v2: paired per round, with the interval
            sp50 = "1×" if backend == REFERENCE else _ratio_cell(s.get("speedup_p50"))
            sthr = "1×" if backend == REFERENCE else _ratio_cell(top.get("speedup"))
        else:
            thr = bf.value(top, "samples_per_s")
            sp50 = fmt(base_p50 / p50, 2, "×") if base_p50 and p50 else DASH
            sthr = fmt(thr / base_thr, 2, "×") if base_thr and thr else DASH
        p90, p99 = bf.value(s, "p90"), bf.value(s, "p99")
        p90_cell = fmt(p90, 2) + ("*" if dig(s, "percentile_ok", "p90") is False and p90 is not None else "")
        p99_cell = fmt(p99, 2) + ("*" if dig(s, "percentile_ok", "p99") is False and p99 is not None else "")
        rss = max((x for x in (as_number(r.get("peak_rss_serving_mb") if r.get("peak_rss_serving_mb") is not None
                                         else r.get("peak_rss_mb")) for r in rs) if x is not None), default=None)
        gate, verdict = _bench_verdicts(rs)
        rows.append([
            as_text(backend), _precision_cell(precision, rs), _ci_cell(p50, bf.interval(s, "p50"), 2), p90_cell, p99_cell,
            as_text(s.get("queries_per_round")) if s.get("queries_per_round") is not None else DASH,
            *[_ci_cell(bf.value(offline(rs, b) or {}, "samples_per_s"), bf.interval(offline(rs, b) or {}, "samples_per_s"), 1)
              for b in batch_sizes],
            fmt(pct, 1, "%"), *acc_vals, as_text(acc.get("accuracy_count")) if acc.get("accuracy_count") else DASH,
            gate, sp50, sthr, fmt(rss, 0), verdict,
        ])
    cov = next((as_number(r.get("ci_coverage")) for r in records if as_number(r.get("ci_coverage"))), None)
    note = (f"; [a-b]: order-statistic interval of the median over rounds (true coverage {100 * cov:.1f}%), "
            "speed-ups paired by round; * percentile from fewer queries than MLPerf LoadGen's minimum") if cov else ""
    rss_note = ("; peak RSS (serving): load and timed rounds, without the accuracy pass over the memory-mapped "
                "test split" if serving else "")
    return Table(cols, rows, f"latency: single-stream, batch 1; speed-up vs {REFERENCE}{note}{rss_note}")


def server_table(records: list[dict]) -> Table | None:
    rs = [r for r in records if r.get("scenario") == "server"]
    if not rs:
        return None
    cols = ["backend", "precision", "target rate (q/s)", "achieved rate (q/s)", "p99 ms", "latency bound ms",
            "bound met", "highest rate meeting the bound (q/s)"]
    rows = [[as_text(r.get("backend")), as_text(r.get("precision")), fmt(r.get("target_rate"), 1),
             fmt(r.get("achieved_rate"), 1), _ci_cell(bf.value(r, "p99"), bf.interval(r, "p99"), 2),
             fmt(r.get("latency_bound_ms"), 1),
             DASH if r.get("bound_met") is None else ("yes" if r.get("bound_met") else "no"),
             fmt(r.get("max_rate"), 1)] for r in rs]
    return Table(cols, rows, "server scenario: Poisson arrivals at one target rate and bound per model, the same "
                             "for every backend; latency from the scheduled arrival")
