"""Is there a per-process effect once time is taken out? K live worker processes per backend take
turns round by round (process k's rounds are spread over the whole run), so a process's own shift
shows as a spread of its mean beyond the noise floor (within-process sd / sqrt(cycles)).

    python docs/results/bench-noise/interleaved_processes.py RUN DATA_ROOT OUT.json [K] [CYCLES]
"""
import json
import math
import statistics as st
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness.bench import accuracy
from harness.run_folder import onnx_path
from harness.bench.launchers import ProcessWorker
from harness.run_folder import load_run

BACKENDS = ("torch-eager", "ort-int8")


def measure(run: Path, data_root: Path, k: int = 4, cycles: int = 6) -> dict:
    cfg, _ = load_run(run)
    folder = Path(tempfile.mkdtemp())
    accuracy.prepare_inputs(cfg, data_root, 16, 0, folder)
    onnx = {p: {"path": str(onnx_path(run, "segmentation", p)), "sha256": None, "note": None} for p in ("fp32", "int8")}
    job = {"run": run.name, "run_dir": str(run), "task": "segmentation", "dir": str(folder), "onnx": onnx,
           "experiment": cfg.name, "dataset": cfg.dataset}
    settings = {"threads": 2, "device": ["cpu", None], "warmup": 3, "ort_opt_level": "all", "wait": "spin",
                "batch_sizes": [1, 8]}
    workers = {(b, i): ProcessWorker(b, settings) for b in BACKENDS for i in range(k)}
    for w in workers.values():
        w.call("load", job=job)
    res = {key: {"p50": [], "tput": []} for key in workers}
    for c in range(cycles):
        for i in range(k):
            for b in BACKENDS:
                m = workers[(b, i)].call("measure", scenario="single-stream", batch_size=1,
                                         timing={"min_queries": 64, "min_duration": 0.5}, seed=c)
                res[(b, i)]["p50"].append(float(np.percentile(m["latencies_s"], 50)) * 1e3)
            for b in BACKENDS:
                m = workers[(b, i)].call("measure", scenario="offline", batch_size=8,
                                         timing={"min_queries": 8, "min_duration": 0.5}, seed=c)
                res[(b, i)]["tput"].append(m["samples"] / m["duration_s"])
        print(f"cycle {c + 1}/{cycles}", flush=True)
    for w in workers.values():
        w.close()
    return {f"{b}|{i}": v for (b, i), v in res.items()}


def spread(rows: list[list[float]]) -> str:
    logs = [[math.log(x) for x in r] for r in rows]
    within = st.mean([st.pvariance(r) for r in logs]) ** .5
    return (f"process medians {[round(st.median(r), 2) for r in rows]}; sd of process means "
            f"{st.pstdev([st.mean(r) for r in logs]) * 100:.1f}% (noise floor {within / math.sqrt(len(rows[0])) * 100:.1f}%)")


def summarize(res: dict) -> None:
    k = len([key for key in res if key.startswith(BACKENDS[0])])
    for metric in ("p50", "tput"):
        rows = {b: [res[f"{b}|{i}"][metric] for i in range(k)] for b in BACKENDS}
        for b in BACKENDS:
            print(metric, b, spread(rows[b]))
        ratio = [[(e / q) if metric == "p50" else (q / e) for e, q in zip(*(rows[b][i] for b in BACKENDS))] for i in range(k)]
        print(metric, "int8 speed-up", spread(ratio))


if __name__ == "__main__":
    if len(sys.argv) >= 4:
        out = measure(Path(sys.argv[1]), Path(sys.argv[2]), *(int(a) for a in sys.argv[4:6]))
        Path(sys.argv[3]).write_text(json.dumps(out))
    summarize(json.loads(Path(sys.argv[-1] if len(sys.argv) == 2 else sys.argv[3]).read_text()))
