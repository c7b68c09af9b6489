"""The headline's session-to-session spread beside its within-session interval: the same bench run
in separate sessions spread over time, and per session the paired speed-up of --fast against
--reference (offline batch 8 samples/s, and batch-1 p50 latency), each with its own interval. The
within-session interval only covers the rounds of one session; the spread of the session medians is
what a reader comparing two published benches sees.

    python scripts/session_spread.py RUN_DIR --data-root ../shared/data --fast ort-int8 \
        --reference torch-eager --sessions 3 --every-min 20 --out docs/results/session-spread

--fast best-ort / --reference best-torch read the bench's own verdict (the fastest accurate backend
of each runtime, session by session); --all-backends benches every default backend (the README's
headline bench) instead of the two. --one runs a single session (the next session-N.json in OUT),
for sessions placed by hand around other work (--rebuild: none); every invocation rebuilds OUT/spread.json and
OUT/README.md from all the session files in OUT, and prints where they are.
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
from harness.bench.verdicts import verdicts  # noqa: E402
from harness.bench.records import coverage_label  # noqa: E402
from harness.io import atomic_write_json, atomic_write_text  # noqa: E402


def _rec(doc: dict, backend: str, scenario: str, bs: int) -> dict:
    for r in doc["results"]:
        if (r["backend"], r["scenario"], r["batch_size"], r["rank"]) == (backend, scenario, bs, None):
            return r
    raise SystemExit(f"no {backend} {scenario} batch {bs} record in the bench (see its `skipped`)")


BEST = {"best-ort": "best_ort", "best-torch": "best_torch"}


def _pick(doc: dict, name: str, scenario: str, bs: int) -> str:
    """A backend name, or the session's own fastest accurate one of a runtime (its verdict)."""
    if name not in BEST:
        return name
    for v in verdicts(doc["results"]):  # recomputed: a file's stored verdicts are those of the code that wrote it
        if (v["scenario"], v["batch_size"]) == (scenario, bs) and v.get(BEST[name]):
            return v[BEST[name]]
    raise SystemExit(f"the bench names no {name} backend for {scenario} batch {bs} (see its verdicts)")


def session_figures(doc: dict, fast: str, ref: str, batch: int) -> dict:
    """The paired speed-ups of one session: throughput at `batch`, and batch-1 p50 latency."""
    names = {"offline": (_pick(doc, fast, "offline", batch), _pick(doc, ref, "offline", batch)),
             "single-stream": (_pick(doc, fast, "single-stream", 1), _pick(doc, ref, "single-stream", 1))}
    f, r = (_rec(doc, n, "offline", batch) for n in names["offline"])
    fs, rs = (_rec(doc, n, "single-stream", 1) for n in names["single-stream"])
    return {"backends": names, "elapsed_s": doc["config"].get("elapsed_s"),
            # named as the bench names speed-ups: `speedup` (samples/s), `speedup_p50` (batch-1 p50 latency)
            "speedup": stats.paired_ratio_ci(f["rounds_samples_per_s"], r["rounds_samples_per_s"]),
            "speedup_p50": stats.paired_ratio_ci(rs["rounds_p50_ms"], fs["rounds_p50_ms"]),
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
    p.add_argument("--all-backends", action="store_true", help="bench every default backend, not only the two")
    p.add_argument("--one", action="store_true", help="run one session (the next session-N.json), then rebuild")
    p.add_argument("--rebuild", action="store_true", help="run no session: rebuild spread.json and README.md only")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "session-spread")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(0 if args.rebuild else 1 if args.one else args.sessions):
        start = time.monotonic()
        index = 1 + max([int(f.stem.split("-")[1]) for f in args.out.glob("session-*.json")], default=0)
        out = args.out / f"session-{index}.json"
        named = [] if args.all_backends or {args.fast, args.reference} & set(BEST) else \
            ["--backends", f"{args.reference},{args.fast}"]
        cmd = [sys.executable, "-m", "harness", "bench", str(args.run_dir), *named, "--batch-sizes", str(args.batch_size),
               "--out", str(out)] + (["--data-root", args.data_root] if args.data_root else [])
        print(f"[spread] session {index}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        if not args.one and i + 1 < args.sessions:
            time.sleep(max(0.0, 60 * args.every_min - (time.monotonic() - start)))
    files = sorted(args.out.glob("session-*.json"), key=lambda f: int(f.stem.split("-")[1]))
    docs = [json.loads(f.read_text()) for f in files]
    sessions = [session_figures(d, args.fast, args.reference, args.batch_size) | {"file": f.name}
                for d, f in zip(docs, files)]
    env = docs[0]["env"]
    result = {"command": " ".join(["python", "scripts/session_spread.py", *sys.argv[1:]]), "env": env,
              "fast": args.fast, "reference": args.reference, "batch_size": args.batch_size, "sessions": sessions,
              "speedup": spread(sessions, "speedup"), "speedup_p50": spread(sessions, "speedup_p50")}
    atomic_write_json(args.out / "spread.json", result)
    atomic_write_text(args.out / "README.md", readme(result))
    print(f"[spread] {args.out / 'spread.json'}, {args.out / 'README.md'}", flush=True)


def readme(r: dict) -> str:
    def cell(x: dict) -> str:  # each session's interval with its own coverage (the sessions' rounds may differ)
        return f"{x['median']:.2f}x [{x['lo']:.2f}-{x['hi']:.2f}] ({coverage_label(x['coverage'])}, {x['n']} rounds)"
    rows = "\n".join(f"| {s['file']} | {s['time']} | {' vs '.join(s['backends']['offline'])} | {cell(s['speedup'])} | "
                     f"{cell(s['speedup_p50'])} | {s['reference_p50_ms']:.1f} | {(s.get('elapsed_s') or 0):.0f} |"
                     for s in r["sessions"])
    t, p = r["speedup"], r["speedup_p50"]
    return f"""# Session-to-session spread of {r['fast']} against {r['reference']}

Command: `{r['command']}`; CPU {r['env'].get('cpu_model')}, flags {', '.join(r['env'].get('cpu_flags') or [])}.

| session | started | offline: fast vs reference | batch {r['batch_size']} samples/s, paired | batch-1 p50, paired | reference p50 ms | bench s |
|---|---|---|---|---|---|---|
{rows}

Across sessions the medians span {t['min']:.2f}x-{t['max']:.2f}x at batch {r['batch_size']} ({100 * t['spread']:.1f}%) and
{p['min']:.2f}x-{p['max']:.2f}x at batch-1 p50 ({100 * p['spread']:.1f}%); within one session the interval is
{100 * t['within_session_width']:.1f}% and {100 * p['within_session_width']:.1f}% wide (median over sessions). A
within-session interval says how well one session pins its own median down, not where the next
session will land: quote the spread beside it.
"""


if __name__ == "__main__":
    main()
