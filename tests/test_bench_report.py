"""The report's and the CLI's bench tables on schema-v2 records: medians with their intervals,
paired speed-ups with theirs (two significant figures), query and accuracy counts, verdicts."""
from __future__ import annotations

from harness.bench.records import format_table
from harness.report import bench_table, server_table


def _rec(backend, precision, scenario, bs, sps, ci, speedup=None, speedup_p50=None, valid=True, gate=True, **kw):
    rec = {"run": "unet32", "experiment": "unet-mp-tr-bce", "task": "segmentation", "backend": backend,
           "precision": precision, "scenario": scenario, "batch_size": bs, "rank": None,
           "samples_per_s": sps, "samples_per_s_ci": ci, "ci_coverage": 0.9375,
           "latency_ms": {"p50": 1000 / sps, "p90": 1100 / sps, "p99": 1300 / sps, "max": 1500 / sps},
           "latency_ms_ci": {"p50": [990 / sps, 1010 / sps]}, "percentile_ok": {"p50": True, "p90": True, "p99": False},
           "queries_per_round": 70, "speedup": speedup, "speedup_p50": speedup_p50,
           "dice": 0.80 if gate else 0.50, "dice_delta": 0.0 if gate else -0.30, "accuracy_count": 238,
           "accuracy_pass": gate, "accuracy_gate": {"pass": gate, "reasons": [] if gate else ["metric 0.5000 is 62.50% of the fp32 reference 0.8000 (needs >= 99.0%)"]},
           "stable": valid, "unstable_reasons": [] if valid else ["p90 from 30 queries per round < 64 (LoadGen)"],
           "loadgen_valid": False, "loadgen_reasons": ["not run with --mlperf (LoadGen's durations and counts)"],
           "pct_of_peak": None, "peak_rss_mb": 100.0}
    rec.update(kw)
    return rec


def _records():
    ratio = {"median": 3.94, "lo": 3.71, "hi": 4.12, "coverage": 0.9375, "n": 5}
    return [
        _rec("torch-eager", "fp32", "single-stream", 1, 50.0, [49.0, 51.0]),
        _rec("torch-eager", "fp32", "offline", 8, 93.6, [91.2, 95.0]),
        _rec("ort-int8", "int8", "single-stream", 1, 200.0, [190.0, 210.0], speedup=ratio, speedup_p50=ratio,
             valid=False, gate=False),
        _rec("ort-int8", "int8", "offline", 8, 368.8, [350.0, 380.0], speedup=ratio, gate=False),
        _rec("ort-int8", "int8", "server", 1, 20.0, [19.0, 21.0], speedup_p50=ratio, gate=False, target_rate=20.0,
             achieved_rate=19.8, latency_bound_ms=40.0, bound_met=True, max_rate=150.0),
    ]


def test_report_bench_table_shows_intervals_counts_and_verdicts():
    t = bench_table(_records())
    rows = {r[0]: dict(zip(t.columns, r)) for r in t.rows}
    eager, int8 = rows["torch-eager"], rows["ort-int8"]
    assert eager["samples/s @bs8"] == "93.6 [91.2-95.0]"
    assert int8["speed-up best throughput"] == "3.9× [3.7-4.1]" and int8["speed-up p50"] == "3.9× [3.7-4.1]"
    assert eager["speed-up p50"] == "1×" and eager["p50 ms"] == "20.00 [19.80-20.20]"
    assert eager["p99 ms"].endswith("*") and not eager["p90 ms"].endswith("*")  # p99 below LoadGen's count
    assert eager["accuracy n"] == "238" and eager["accuracy gate"] == "pass" and eager["verdict"] == "stable, not LoadGen-valid"
    assert int8["accuracy gate"].startswith("FAIL: metric 0.5000 is 62.50% of the fp32 reference")
    assert int8["verdict"].startswith("unstable: single-stream bs1: p90 from 30")
    assert "93.75%" in t.caption or "93.8%" in t.caption
    s = server_table(_records())
    (row,) = s.rows
    assert row[2] == "20.0" and row[-1] == "150.0" and row[-2] == "yes"


def test_cli_table_prints_the_same():
    out = format_table([{**r, "rounds": 5, "latency_ms_ci": {"p50": [1.0, 2.0]}} for r in _records()])
    lines = out.splitlines()
    assert "93.6 [91.2-95.0]" in lines[2] and "3.9x [3.7-4.1]" in lines[4]
    assert "n=238 FAIL" in lines[4] and "n=238 pass" in lines[1]
    assert "UNSTABLE: p90 from 30" in lines[3] and lines[1].endswith("stable")
    assert "coverage 93.75%" in lines[-1] and "samples/s [93.8% CI]" in lines[0]


def test_three_rounds_are_never_labelled_95_percent():
    """3 rounds: [min, max] covers the median 75% of the time; the tables say 75%, never 95%."""
    recs = [{**r, "rounds": 3, "ci_coverage": 0.75} for r in _records()]
    out = format_table(recs)
    assert "75% CI" in out.splitlines()[0] and "coverage 75.00%" in out and "95% CI" not in out
    t = bench_table(recs)
    assert "true coverage 75.0%" in t.caption and "95%" not in t.caption.replace("95% needs", "")
    lg = format_table([{**r, "loadgen_valid": True} for r in recs]).splitlines()
    assert lg[1].endswith("stable, LoadGen-valid")


def test_report_section_opens_with_the_verdict_and_marks_a_marginal_gate():
    from pathlib import Path

    from harness.report.model import Results
    from harness.report.sections import _bench_section

    margin = {"pass": True, "ratio": 0.991, "target": 0.99, "marginal": True, "reasons": [],
              "ratio_ci": {"lo": 0.985, "hi": 0.996, "coverage": 0.95, "n": 238, "seed": 0}}
    recs = _records() + [_rec("ort-fp32", "fp32", "offline", 8, 150.0, [140.0, 160.0], accuracy_gate=margin,
                              rounds_samples_per_s=[150.0, 140.0, 160.0])]
    recs[1]["rounds_samples_per_s"] = [93.6, 91.2, 95.0]
    blocks = _bench_section(Results(Path("."), bench={"results": recs, "skipped": {}}), [])
    kinds = [b.kind for b in blocks]
    first_table = kinds.index("table")
    verdict_lines = [b.content for b in blocks[:first_table] if b.kind == "p"]
    assert kinds[1] == "h3" and all(k == "p" for k in kinds[2:first_table]) and len(verdict_lines) == 3
    offline = next(v for v in verdict_lines if " offline bs8 " in v)
    # ort-int8 failed its gate: the fastest ACCURATE ORT backend is ort-fp32, against torch-eager
    assert offline.startswith("Verdict: unet32 offline bs8 (samples/s): fastest accurate ORT ort-fp32 vs fastest "
                              "accurate PyTorch torch-eager 1.6x") and "failed the accuracy gate: ort-int8" in offline
    rows = {r[0]: dict(zip(blocks[first_table].content.columns, r)) for r in blocks[first_table].content.rows}
    assert rows["ort-fp32"]["accuracy gate"].startswith("marginal pass (ratio 0.9910 [0.9850-0.9960]")
    assert "straddles 0.99" in rows["ort-fp32"]["accuracy gate"] and rows["torch-eager"]["accuracy gate"] == "pass"
