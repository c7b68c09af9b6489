"""The regression gates' own error rates on this machine: how often `segvae ab` (one session, paired
rounds) and `segvae compare` (two sessions) say "no change" when nothing changed (A/A: identical
graphs on both sides) and "slower" when the graph really got slower (more compute in the graph:
a chain of elementwise ops on the output whose result is exactly zero, so accuracy is unchanged).

    python scripts/ab_error_rates.py RUN_DIR --data-root ../shared/data --out docs/results/ab-gate

RUN_DIR: an exported UNet run folder (`segvae train ... && segvae export ...`; a small one keeps
the study short, e.g. `segvae train unet-mp-tr-bce --base-channels 8 --image-size 64 --epochs 4
--max-train-samples 256`). Steps:

  1. calibrate: the number of extra ops that costs about --slowdown (5%) of one ort-fp32 offline
     batch, from direct ONNX Runtime timings (interleaved, medians);
  2. size: the slowdown that graph really causes, measured on its own by one long A/B session
     (--size-rounds rounds) of the original against the slowed graph;
  3. trials: --trials A/A sessions and --trials slowed sessions, alternating, each the A/B mode
     at its defaults (`segvae ab OLD NEW --backends ort-fp32 --scenarios offline`) as a subprocess;
  4. cross-session: the same sessions read as separate benches: the OLD side of A/A session i
     against the NEW side of the next A/A (or the next slowed) session, judged by `segvae compare`'s
     rule (harness.compare, its defaults);
  5. writes OUT/ab-gate.json (every verdict, ratio and interval; the command, CPU model and flags)
     and OUT/README.md (the two tables), and prints where they are.
Nothing here is timed in a test: the figures are only as good as the machine was quiet.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.bench.ab import DEFAULT_MAX_SLOWDOWN, FASTER, SAME, SLOWER  # noqa: E402
from harness.bench.slowdown import add_zero_chain  # noqa: E402
from harness.compare import DEFAULT_MAX_SLOWDOWN as COMPARE_MAX_SLOWDOWN  # noqa: E402
from harness.compare import Allow, compare, machine_differences  # noqa: E402
from harness.io import atomic_write_json, atomic_write_text  # noqa: E402

BACKEND, SCENARIO, BATCH = "ort-fp32", "offline", 8


def log(msg: str) -> None:
    print(f"[ab-gate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- the slowed graph
def copy_run(run: Path, dst: Path, ops: int = 0) -> Path:
    """A copy of the run folder (config, weights, onnx/); ops > 0: its fp32 graph slowed."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("wandb", "checkpoints", "*.int8.onnx", "*.fp16.onnx"))
    if ops:
        add_zero_chain(run / "onnx" / "model.onnx", dst / "onnx" / "model.onnx", ops)
    return dst


def _ort_batch_s(path: Path, image: "np.ndarray", threads: int) -> "callable":
    from exports.session import OrtSession

    sess = OrtSession(path, threads, graph_optimization="all", spinning=True, device="cpu")
    feed = {"image": image}

    def run() -> float:
        t0 = time.perf_counter()
        sess.run_unchecked(feed)
        return time.perf_counter() - t0
    return run


def calibrate(run: Path, work: Path, target: float, threads: int) -> dict:
    """Extra ops for about `target` slowdown: the base batch time and the cost per op, from
    interleaved timings of the original and a 200-op graph (medians of 15 rounds of 20 batches)."""
    import numpy as np

    from harness.run_folder import load_config

    cfg = load_config(run)
    image = np.random.default_rng(0).standard_normal((BATCH, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    probe_ops = 200
    add_zero_chain(run / "onnx" / "model.onnx", work / "probe.onnx", probe_ops)
    base, probe = _ort_batch_s(run / "onnx" / "model.onnx", image, threads), _ort_batch_s(work / "probe.onnx", image, threads)
    tb, tp = [], []
    for _ in range(3):
        base(), probe()
    for _ in range(15):
        tb.append(statistics.median(base() for _ in range(20)))
        tp.append(statistics.median(probe() for _ in range(20)))
    t_base, t_probe = statistics.median(tb), statistics.median(tp)
    per_op = max((t_probe - t_base) / probe_ops, 1e-9)
    ops = max(1, round(target * t_base / per_op))
    return {"batch_ms": 1e3 * t_base, "per_op_us": 1e6 * per_op, "ops": ops, "target": target,
            "method": f"ORT alone, batch {BATCH}, {threads} threads: 15 interleaved rounds of 20 batches, the original "
                      f"against a {probe_ops}-op chain; ops = target x batch time / cost per op"}


# ----------------------------------------------------------------------------- sessions
def ab_session(old: Path, new: Path, out: Path, args, rounds: int | None = None) -> dict:
    """One `segvae ab` session as a user runs it; returns its JSON (with the exit code)."""
    cmd = [sys.executable, "-m", "harness", "ab", str(old), str(new), "--backends", BACKEND, "--scenarios", SCENARIO,
           "--batch-sizes", str(BATCH), "--accuracy-samples", str(args.accuracy_samples), "--out", str(out)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    if rounds:
        cmd += ["--rounds", str(rounds), "--fixed-rounds"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode not in (0, 1):
        raise SystemExit(f"segvae ab failed ({p.returncode}):\n{p.stderr[-3000:]}")
    doc = json.loads(out.read_text())
    doc["_exit"] = p.returncode
    return doc


def _row(doc: dict) -> dict:
    (row,) = [r for r in doc["ab"] if (r["backend"], r["scenario"], r["batch_size"]) == (BACKEND, SCENARIO, BATCH)]
    return row


def side_doc(doc: dict, side: str) -> dict:
    """One side of an A/B session as a bench.json of its own (what a cross-session compare sees)."""
    recs = [{k: v for k, v in r.items() if k != "side"} | {"run": "unet", "experiment": "unet"}
            for r in doc["results"] if r["side"] == side and r["backend"] == BACKEND]
    return {"version": doc["version"], "env": doc["env"], "config": doc["config"], "results": recs}


def cross_verdict(old_doc: dict, new_doc: dict) -> tuple[str, float]:
    """`segvae compare`'s verdict on two sessions' sides. The A/B sessions size their own rounds, so
    the two sides may differ in config.rounds (and its sizing record) and in nothing else: only those
    differences are allowed; any other is an error, as it is for the CLI."""
    diffs, _ = machine_differences(old_doc, new_doc)
    other = [d for d in diffs if not d.startswith(("config.rounds", "config.rounds_sizing"))]
    if other:
        raise SystemExit(f"cross-session pair differs beyond its sized rounds: {other}")
    c = compare(old_doc, new_doc, allow=Allow(different_machine=bool(diffs)))
    (row,) = [r for r in c.speed if r["key"][1:] == (BACKEND, SCENARIO, BATCH)]
    return row["verdict"], row["change"]


def _tally(verdicts: list[str]) -> dict:
    return {v: verdicts.count(v) for v in sorted(set(verdicts))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="an exported UNet run folder")
    p.add_argument("--data-root", help="data for the accuracy pass (default: the run's)")
    p.add_argument("--trials", type=int, default=20, help="A/A sessions and as many slowed sessions (default: 20)")
    p.add_argument("--slowdown", type=float, default=0.05, help="slowdown to build into the graph (default: 0.05)")
    p.add_argument("--ops", type=int, help="extra ops in the slowed graph (default: calibrated to --slowdown)")
    p.add_argument("--size-rounds", type=int, default=40, help="rounds of the session that sizes the slowdown (default: 40)")
    p.add_argument("--accuracy-samples", type=int, default=16, help="per session (default: 16; speed is the point here)")
    p.add_argument("--threads", type=int, help="threads per backend (default: the bench's, all cores)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "ab-gate", help="folder for the JSON and README")
    args = p.parse_args()
    if not (args.run_dir / "onnx" / "model.onnx").is_file():
        raise SystemExit(f"{args.run_dir}: no onnx/model.onnx; run `segvae export {args.run_dir}` first")
    import os

    from harness.bench.trackers import env_info

    t0 = time.perf_counter()
    threads = args.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ab-gate-") as tmp:
        work = Path(tmp)
        cal = calibrate(args.run_dir, work, args.slowdown, threads) if args.ops is None else {"ops": args.ops}
        ops = cal["ops"]
        log(f"slowed graph: {ops} extra ops ({cal})")
        base, same, slow = (copy_run(args.run_dir, work / "old" / "unet"), copy_run(args.run_dir, work / "same" / "unet"),
                            copy_run(args.run_dir, work / "slow" / "unet", ops))
        size = _row(ab_session(base, slow, work / "size.json", args, rounds=args.size_rounds))
        log(f"size of the slowdown on its own ({args.size_rounds} rounds): NEW/OLD {size['ratio']}")
        aa, sl = [], []
        for i in range(args.trials):
            for kind, new, into in (("A/A", same, aa), ("slowed", slow, sl)):
                doc = ab_session(base, new, work / f"{kind[0]}{i}.json", args)
                into.append(doc)
                r = _row(doc)
                log(f"{kind} {i + 1}/{args.trials}: {r['speed']} ratio {r['ratio']['median']:.4f} "
                    f"[{r['ratio']['lo']:.4f}, {r['ratio']['hi']:.4f}] exit {doc['_exit']}")
        env = env_info(sys.argv)
    ab_aa, ab_sl = [_row(d) for d in aa], [_row(d) for d in sl]
    n = args.trials
    # cross-session: OLD side of A/A session i against the NEW side of the next sessions
    cross_aa = [cross_verdict(side_doc(aa[i], "OLD"), side_doc(aa[(i + 1) % n], "NEW")) for i in range(n)]
    cross_sl = [cross_verdict(side_doc(aa[i], "OLD"), side_doc(sl[i], "NEW")) for i in range(n)]
    result = {
        "what": "error rates of the A/B gate (segvae ab) and the cross-session gate (segvae compare)",
        "command": " ".join(["python", "scripts/ab_error_rates.py", *sys.argv[1:]]),
        "env": env, "model": str(args.run_dir), "backend": BACKEND, "scenario": SCENARIO, "batch_size": BATCH,
        "ab_defaults": {"rounds": aa[0]["config"]["rounds_sizing"]["rule"],
                        "rounds_run": {"aa": [d["config"]["rounds"] for d in aa], "slowed": [d["config"]["rounds"] for d in sl]},
                        "sigma_log_ratio": {"aa": [d["config"]["rounds_sizing"].get("sigma_log_ratio") for d in aa],
                                            "slowed": [d["config"]["rounds_sizing"].get("sigma_log_ratio") for d in sl]},
                        "seconds_per_session": {"aa": [d["config"]["elapsed_s"] for d in aa],
                                                "slowed": [d["config"]["elapsed_s"] for d in sl]},
                        "slices": aa[0]["config"].get("slices_used"), "wait": aa[0]["config"].get("wait"),
                        "min_duration": aa[0]["config"]["min_duration"],
                        "min_queries": aa[0]["config"]["min_queries"], "max_slowdown": DEFAULT_MAX_SLOWDOWN},
        "compare_max_slowdown": COMPARE_MAX_SLOWDOWN,
        "slowed_graph": {"extra_ops": ops, "calibration": cal, "size": size["ratio"],
                         "size_rounds": args.size_rounds},
        "ab": {"aa": _tally([r["speed"] for r in ab_aa]), "slowed": _tally([r["speed"] for r in ab_sl]),
               "aa_rows": [{"ratio": r["ratio"], "speed": r["speed"]} for r in ab_aa],
               "slowed_rows": [{"ratio": r["ratio"], "speed": r["speed"]} for r in ab_sl],
               "aa_exit": [d["_exit"] for d in aa], "slowed_exit": [d["_exit"] for d in sl]},
        "cross_session": {"aa": _tally([v for v, _ in cross_aa]), "slowed": _tally([v for v, _ in cross_sl]),
                          "aa_rows": [{"verdict": v, "change": c} for v, c in cross_aa],
                          "slowed_rows": [{"verdict": v, "change": c} for v, c in cross_sl],
                          "pairs": "OLD side of A/A session i vs the NEW side of A/A session i+1 (A/A) or of slowed "
                                   "session i (slowed), each read as its own bench.json"},
        "elapsed_s": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "ab-gate.json", result)
    atomic_write_text(args.out / "README.md", readme(result))
    log(f"done in {result['elapsed_s']:.0f} s: {args.out / 'ab-gate.json'}, {args.out / 'README.md'}")


def readme(r: dict) -> str:
    n = len(r["ab"]["aa_rows"])
    s = r["slowed_graph"]["size"]

    def count(tally: dict, v: str) -> str:
        return f"{tally.get(v, 0)}/{n}"
    ab, cs = r["ab"], r["cross_session"]
    cov = 100 * s["coverage"]
    d = r["ab_defaults"]
    runs = sorted(d["rounds_run"]["aa"] + d["rounds_run"]["slowed"])
    secs = sorted(d["seconds_per_session"]["aa"] + d["seconds_per_session"]["slowed"])
    ab_settings = (f"defaults: sized rounds ({runs[0]}-{runs[-1]}, median {statistics.median(runs):g}), {d['slices']} turns per "
                   f"round, idle threads {d['wait']}, max slowdown {100 * d['max_slowdown']:g}%; "
                   f"{statistics.median(secs):.0f} s per session (median)")
    return f"""# Error rates of the regression gates

Command: `{r['command']}` ({r['elapsed_s'] / 60:.0f} min)
CPU: {r['env'].get('cpu_model')}, flags {', '.join(r['env'].get('cpu_flags') or []) or 'none of the probed'},
{r['env'].get('cores_logical')} logical cores; git {str(r['env'].get('git_commit'))[:10]}{' (dirty)' if r['env'].get('git_dirty') else ''}.
Model: `{r['model']}`, backend {r['backend']}, {r['scenario']} batch {r['batch_size']}.

The slowed graph adds {r['slowed_graph']['extra_ops']} elementwise ops whose sum is exactly zero (the outputs and
the accuracy are unchanged). Its size measured on its own, one A/B session of {r['slowed_graph']['size_rounds']}
rounds: NEW/OLD samples/s {s['median']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}] ({cov:.1f}% interval), a slowdown of
{100 * (1 - s['median']):.1f}%.

| gate | settings | A/A: "no change" | A/A: "slower" | A/A: "faster" | slowed: "slower" |
|---|---|---|---|---|---|
| `segvae ab` (one session, paired rounds) | {ab_settings} | {count(ab['aa'], SAME)} | {count(ab['aa'], SLOWER)} | {count(ab['aa'], FASTER)} | {count(ab['slowed'], SLOWER)} |
| `segvae compare` (two sessions, disjoint intervals) | the same sessions' sides, max slowdown {100 * r['compare_max_slowdown']:g}% | {count(cs['aa'], 'no significant change')} | {count(cs['aa'], SLOWER)} | {count(cs['aa'], FASTER)} | {count(cs['slowed'], SLOWER)} |

What it means: the A/B gate pairs NEW and OLD round by round, so the host's drift cancels in the ratio;
the cross-session gate compares two intervals taken at different times, and whatever the host did in
between lands in its verdict. The cross-session pairs here are at most a few minutes apart on the same
machine, the kindest case; days apart, or across a reboot, the drift is larger. Target: A/A "no change"
>= 19/20 and a 5% slowdown "slower" >= 18/20. Every verdict, ratio and interval: `ab-gate.json`.
"""


if __name__ == "__main__":
    main()
