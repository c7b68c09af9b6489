"""How much a backend's turn is slowed by the ORT backend that went just before it (spinning threads).

Reads bench JSONs (`segvae bench ... --settle-s 0` and with the default pause) and, for each backend of
each (run, scenario, batch size), splits its rounds by what ran just before it: nothing (first turn of
the bench), torch, or an ORT backend. Prints median samples/s per group and the headline per file, and
writes them as JSON, so a reader can check a claim about the pause against the benches themselves.

    python scripts/settle_effect.py OUT.json BENCH.json [BENCH.json ...]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.io import atomic_write_json


def predecessors(doc: dict, run: str, item: str) -> list[dict[str, str]]:
    """Per round, backend -> the family ('none', 'torch', 'ort', ...) of the turn just before it,
    the previous round's last turn included (the bench measures its items and rounds back to back)."""
    out, last = [], None
    for round_ in doc["config"]["order"]["schedule"][run]:
        pred = {}
        for key, order in round_.items():
            for name in order:
                if key == item:
                    pred[name] = "none" if last is None else last.split("-")[0]
                last = name
        out.append(pred)
    return out


def effect(doc: dict) -> list[dict]:
    rows = []
    for r in doc["results"]:
        item = f"{r['scenario']}|{r['batch_size']}"
        preds = predecessors(doc, r["run"], item)
        groups: dict[str, list[float]] = {}
        for p, v in zip(preds, r["rounds_samples_per_s"]):
            groups.setdefault(p[r["backend"]], []).append(v)
        rows.append({"run": r["run"], "backend": r["backend"], "scenario": r["scenario"], "batch_size": r["batch_size"],
                     "samples_per_s": r["samples_per_s"], "samples_per_s_ci": r["samples_per_s_ci"],
                     "ci_coverage": r["ci_coverage"], "rounds": r["rounds"],
                     "after": {k: {"rounds": len(v), "median_samples_per_s": statistics.median(v)}
                               for k, v in sorted(groups.items())}})
    return rows


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    out, docs = Path(argv[0]), {}
    for path in argv[1:]:
        doc = json.loads(Path(path).read_text())
        docs[Path(path).name] = {"settle_s_used": doc["config"].get("settle_s_used"),
                                 "verdicts": [{k: v[k] for k in ("run", "scenario", "batch_size", "best_ort",
                                                                 "best_torch", "ort_vs_torch")} for v in doc["verdicts"]],
                                 "backends": effect(doc)}
        print(f"{path} (settle {docs[Path(path).name]['settle_s_used']} s)")
        for row in docs[Path(path).name]["backends"]:
            after = ", ".join(f"after {k} {g['median_samples_per_s']:.1f} (n={g['rounds']})" for k, g in row["after"].items())
            print(f"  {row['backend']:<14} {row['samples_per_s']:.1f} {row['samples_per_s_ci']}: {after}")
        for v in docs[Path(path).name]["verdicts"]:
            s = v["ort_vs_torch"]
            print(f"  headline {v['best_ort']} vs {v['best_torch']}: {s['median']:.3f} [{s['lo']:.3f}-{s['hi']:.3f}]")
    atomic_write_json(out, {"files": docs})
    print(f"written: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
