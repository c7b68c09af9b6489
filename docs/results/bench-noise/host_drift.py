"""Across runs: how torch eager's own batch-1 p50 and the int8 speed-up move together, round by round.

    python docs/results/bench-noise/host_drift.py docs/results/bench-noise/bench-*.json
"""
import json
import sys

import numpy as np

eager, int8 = [], []
for f in sys.argv[1:]:
    recs = {r["backend"]: r for r in json.load(open(f))["results"] if r["scenario"] == "single-stream"}
    e, q = (np.array(recs[b]["rounds_p50_ms"]) for b in ("torch-eager", "ort-int8"))
    s = recs["ort-int8"]["speedup_p50"]
    print(f"{f.split('/')[-1]:22} eager p50 {np.median(e):5.1f} ms  int8 {np.median(q):5.2f} ms  "
          f"speed-up {s['median']:.2f}x [{s['lo']:.2f}-{s['hi']:.2f}]")
    eager += list(e)
    int8 += list(q)
e, q = np.log(eager), np.log(int8)
print(f"{len(e)} rounds: corr(log speed-up, log eager p50) {np.corrcoef(e - q, e)[0, 1]:.2f}; "
      f"int8's elasticity to eager {np.polyfit(e, q, 1)[0]:.2f}")
