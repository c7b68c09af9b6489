"""The headline's session-to-session spread beside its within-session interval: the same bench run
in --sessions separate sessions spread over time (default 3, 20 minutes apart), and per session the
paired speed-up of --fast against --reference (offline batch 8 samples/s, and batch-1 p50 latency),
each with its own interval. The within-session interval only covers the rounds of one session; the
spread of the session medians is what a reader comparing two published benches sees.

    python scripts/session_spread.py RUN_DIR --data-root ../shared/data --fast ort-int8 \
        --reference torch-eager --sessions 3 --every-min 20 --out docs/results/session-spread

Writes OUT/session-N.json (each bench), OUT/spread.json and OUT/README.md, and prints where.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.bench import stats  # noqa: E402
from harness.bench.records import coverage_label  # noqa: E402
from harness.io import atomic_write_json, atomic_write_text  # noqa: E402


def _rec(doc: dict, backend: str, scenario: str, bs: int) -> dict:
    for r in doc["results"]:
        if (r["backend"], r["scenario"], r["batch_size"], r["rank"]) == (backend, scenario, bs, None):
            return r
    raise SystemExit(f"no {backend} {scenario} batch {bs} record in the bench (see its `skipped`)")


def session_figures(doc: dict, fast: str, ref: str, batch: int) -> dict:
    """The paired speed-ups of one session: throughput at `batch`, and batch-1 p50 latency."""
    f, r = _rec(doc, fast, "offline", batch), _rec(doc, ref, "offline", batch)
    fs, rs = _rec(doc, fast, "single-stream", 1), _rec(doc, ref, "single-stream", 1)
    return {"throughput": stats.paired_ratio_ci(f["rounds_samples_per_s"], r["rounds_samples_per_s"]),
            "p50": stats.paired_ratio_ci(rs["rounds_p50_ms"], fs["rounds_p50_ms"]),
            "reference_p50_ms": rs["latency_ms"]["p50"], "time": doc["env"].get("time"),
            "git_commit": doc["env"].get("git_commit")}


def spread(sessions: list[dict], key: str) -> dict:
    meds = [s[key]["median"] for s in sessions]
    widths = [s[key]["hi"] / s[key]["lo"] - 1 for s in sessions]
    return {"medians": meds, "min": min(meds), "max": max(meds), "spread": max(meds) / min(meds) - 1,
            "within_session_width": sorted(widths)[len(widths) // 2], "coverage": sessions[0][key]["coverage"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="an exported run folder")
    p.add_argument("--data-root", help="data for the accuracy pass (default: the run's)")
    p.add_argument("--fast", default="ort-int8", help="the headline's backend (default: ort-int8)")
    p.add_argument("--reference", default="torch-eager", help="what it is measured against (default: torch-eager)")
    p.add_argument("--batch-size", type=int, default=8, help="offline batch size (default: 8)")
    p.add_argument("--sessions", type=int, default=3, help="benches, each its own session (default: 3)")
    p.add_argument("--every-min", type=float, default=20.0, help="minutes from one session's start to the next (default: 20)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "session-spread")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sessions = []
    for i in range(args.sessions):
        start = time.monotonic()
        out = args.out / f"session-{i + 1}.json"
        cmd = [sys.executable, "-m", "harness", "bench", str(args.run_dir), "--backends", f"{args.reference},{args.fast}",
               "--batch-sizes", str(args.batch_size), "--out", str(out)] + (["--data-root", args.data_root] if args.data_root else [])
        print(f"[spread] session {i + 1}/{args.sessions}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        sessions.append(session_figures(json.loads(out.read_text()), args.fast, args.reference, args.batch_size))
        if i + 1 < args.sessions:
            time.sleep(max(0.0, 60 * args.every_min - (time.monotonic() - start)))
    env = json.loads((args.out / "session-1.json").read_text())["env"]
    result = {"command": " ".join(["python", "scripts/session_spread.py", *sys.argv[1:]]), "env": env,
              "fast": args.fast, "reference": args.reference, "batch_size": args.batch_size, "sessions": sessions,
              "throughput": spread(sessions, "throughput"), "p50": spread(sessions, "p50")}
    atomic_write_json(args.out / "spread.json", result)
    atomic_write_text(args.out / "README.md", readme(result))
    print(f"[spread] {args.out / 'spread.json'}, {args.out / 'README.md'}", flush=True)


def readme(r: dict) -> str:
    label = coverage_label(r["throughput"]["coverage"])
    rows = "\n".join(f"| {i + 1} | {s['time']} | {s['throughput']['median']:.2f}x [{s['throughput']['lo']:.2f}-"
                     f"{s['throughput']['hi']:.2f}] | {s['p50']['median']:.2f}x [{s['p50']['lo']:.2f}-{s['p50']['hi']:.2f}] | "
                     f"{s['reference_p50_ms']:.1f} |" for i, s in enumerate(r["sessions"]))
    t, p = r["throughput"], r["p50"]
    return f"""# Session-to-session spread of {r['fast']} against {r['reference']}

Command: `{r['command']}`; CPU {r['env'].get('cpu_model')}, flags {', '.join(r['env'].get('cpu_flags') or [])}.

| session | started | batch {r['batch_size']} samples/s, paired [{label}] | batch-1 p50, paired [{label}] | {r['reference']} p50 ms |
|---|---|---|---|---|
{rows}

Across sessions the medians span {t['min']:.2f}x-{t['max']:.2f}x at batch {r['batch_size']} ({100 * t['spread']:.1f}%) and
{p['min']:.2f}x-{p['max']:.2f}x at batch-1 p50 ({100 * p['spread']:.1f}%); within one session the interval is
{100 * t['within_session_width']:.1f}% and {100 * p['within_session_width']:.1f}% wide (median over sessions). A
within-session interval says how well one session pins its own median down, not where the next
session will land: quote the spread beside it.
"""


if __name__ == "__main__":
    main()
