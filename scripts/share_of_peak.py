"""Each backend's share of the machine's peak, with the interval of its throughput, from bench JSONs.

A bench record holds samples/s with its order-statistic interval, FLOPs per sample and the session's
matmul probe; the share of peak is samples/s x FLOPs / the probe's GOP/s for the backend's precision,
so its interval is the throughput's, scaled. Reads `segvae bench` JSONs and `scripts/torch_layouts.py`
JSONs; prints a table and writes the figures as JSON (the fractions a README's percentages come from).

    python scripts/share_of_peak.py OUT.json BENCH_OR_LAYOUTS.json [...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.io import atomic_write_json


def rows(doc: dict) -> list[dict]:
    """(name, precision, samples/s CI, FLOPs per sample, batch size) of every backend or layout in one file."""
    if "forms" in doc:  # scripts/torch_layouts.py
        return [{"name": f"torch eager, {name}", "precision": f["precision"], "ci": f["samples_per_s"],
                 "flops_per_sample": doc["flops_per_sample"], "batch_size": doc["batch_size"], "scenario": "offline"}
                for name, f in doc["forms"].items()]
    out = []
    for r in doc["results"]:
        ci = {"median": r["samples_per_s"], "lo": r["samples_per_s_ci"][0], "hi": r["samples_per_s_ci"][1],
              "coverage": r["ci_coverage"], "n": r["rounds"]}
        out.append({"name": r["backend"], "precision": r["precision"], "ci": ci, "flops_per_sample": r["flops_per_sample"],
                    "batch_size": r["batch_size"], "scenario": r["scenario"], "run": r["run"]})
    return out


def share(row: dict, peak: dict) -> dict:
    gops = (peak.get(row["precision"]) or {}).get("gflops_per_s")
    ci = row["ci"]
    scale = row["flops_per_sample"] / 1e9
    out = {**row, "peak_gops": gops, "gops": ci["median"] * scale}
    if gops:
        out["share_of_peak"] = {"median": ci["median"] * scale / gops, "lo": ci["lo"] * scale / gops,
                                "hi": ci["hi"] * scale / gops, "coverage": ci["coverage"], "n": ci["n"]}
    return out


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    out, files = Path(argv[0]), {}
    for path in argv[1:]:
        doc = json.loads(Path(path).read_text())
        peak = doc.get("peak") or {}  # the A/B mode probes none
        got = [share(r, peak) for r in rows(doc)]
        files[Path(path).name] = {"peak": {p: (peak.get(p) or {}).get("gflops_per_s") for p in ("fp32", "bf16", "int8")},
                                  "rows": got}
        print(f"{path}: peaks " + ", ".join(f"{p} {v:.0f}" for p, v in files[Path(path).name]["peak"].items() if v))
        for r in got:
            s = r.get("share_of_peak")
            txt = f"{100 * s['median']:.1f}% [{100 * s['lo']:.1f}-{100 * s['hi']:.1f}] of the {r['precision']} peak " \
                  f"({100 * s['coverage']:.1f}% CI, {s['n']} rounds)" if s else "no peak"
            print(f"  {r.get('run', ''):<12} {r['name']:<30} {r['ci']['median']:8.1f} samples/s, {r['gops']:7.1f} GOP/s, {txt}")
    atomic_write_json(out, {"files": files})
    print(f"written: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
