"""The measuring side: one `Worker` per backend holds the loaded model and answers commands.

Launched as its own process (launchers.ProcessWorker: JSON lines on stdin, replies on a private
copy of stdout while fd 1 is pointed at stderr, so library prints never corrupt a reply) or used
in process (launchers.LocalWorker, distributed runs). Commands:

  load      {job}                      build the backend for a run, prepare every batch size
  measure   {scenario, batch_size, timing, rate?, bound_ms?, seed, warmup?}   one round (or a slice of
                                       one: warmup 0) -> Measurement.pack()
  search    {start_rate, bound_ms, timing, seed}                     highest rate meeting the bound
  accuracy  {batch_size}               this rank's shard of the test inputs -> outputs saved as .npy
  finish    {}                         peak RSS of this run (whole, and serving: without the accuracy
                                       pass over the test split), whether torch was ever imported here

This module imports neither torch nor anything that does (ORT workers must stay torch-free).
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from harness.bench import trackers
from harness.bench.backend_base import INPUT_NAMES
from harness.bench.backends import REGISTRY
from harness.bench.device import Device
from harness.bench.process_env import ORT_MALLOC, retain_freed_memory
from harness.bench.scenarios import SCENARIOS, search_rate
from harness.io import jsonable


def _take(arrays, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.take(v, idx, axis=0)) for k, v in arrays.items()}


class Worker:
    def __init__(self, name: str, settings: dict, rank: int = 0, world: int = 1, dist=None):
        self.name, self.settings, self.rank, self.world, self.dist = name, settings, rank, world, dist
        # torch's CPU allocator is malloc; ONNX Runtime has its own arena, and the setting changed neither
        # its speed (int8 about 110 img/s either way) nor its peak RSS (ort-fp32 383 MB, 373 before)
        self.malloc = retain_freed_memory() if REGISTRY[name].family == "torch" else dict(ORT_MALLOC)
        self.device = Device(*settings["device"])
        self.backend, self.job = None, None
        if REGISTRY[name].family == "torch":
            import torch
            torch.set_num_threads(settings["threads"])

    # ------------------------------------------------------------------ commands
    def handle(self, op: str, kw: dict):
        return getattr(self, f"op_{op}")(**kw)

    def op_load(self, job: dict) -> dict:
        self._close()
        trackers.reset_peak_rss()
        self.backend = REGISTRY[self.name].from_settings(self.settings)
        # torch.compile's inductor cache: one per run and rank, kept across this backend's fresh processes
        job = self.job = {**job, "compile_cache": str(Path(job["dir"]) / f"inductor-{self.name}-r{self.rank}")}
        self._map_inputs()
        self.backend.load(job, self.settings["threads"], self.device)
        compile_s = {}
        for b in self.settings["batch_sizes"]:
            c = self.backend.prepare(b)
            if c is not None:
                compile_s[str(b)] = c
        self.peak_mb = {"load": trackers.peak_rss_mb()[0]}
        path = self.backend.model_file()
        return {"form": self.backend.form, "graph_rewrites": getattr(self.backend, "graph_rewrites", {}),
                "compile_s": compile_s, "pid": os.getpid(), "model_bytes": trackers.files_size(path) if path else None}

    def _map_inputs(self):
        """The test inputs, memory-mapped: only the pages a command touches become resident (a fresh map
        after the accuracy pass drops the whole split from this process's RSS)."""
        self.arrays = {k: np.load(Path(self.job["dir"]) / f"{k}.npy", mmap_mode="r", allow_pickle=False)
                       for k in INPUT_NAMES[self.job["task"]]}

    def _inputs(self, b: int) -> dict:
        n = len(next(iter(self.arrays.values())))
        return _take(self.arrays, np.arange(b) % n)

    def op_measure(self, scenario: str, batch_size: int, timing: dict, rate: float | None = None,
                   bound_ms: float | None = None, seed: int = 0, warmup: int | None = None) -> dict | None:
        kind = SCENARIOS[scenario]
        if not kind.all_ranks and self.rank != 0:  # rank 0 measures latency scenarios alone
            return None
        inputs = self._inputs(batch_size)
        run = self.backend.bind(inputs)
        if kind.all_ranks and self.dist is not None:
            self.dist.barrier()  # ranks measure together: their throughputs add up
        warmup = self.settings["warmup"] if warmup is None else warmup
        m = kind.measure(run, batch_size, timing=timing, warmup=warmup, rate=rate, bound_ms=bound_ms, seed=seed)
        out = m.pack()
        out["h2d_ms"] = self.backend.h2d_ms(inputs)
        return out

    def op_search(self, start_rate: float, bound_ms: float, timing: dict, seed: int = 0) -> dict | None:
        if self.rank != 0:
            return None
        run = self.backend.bind(self._inputs(1))
        return search_rate(run, start_rate=start_rate, latency_bound_ms=bound_ms, warmup=self.settings["warmup"],
                              seed=seed, **timing)

    def op_accuracy(self, batch_size: int) -> dict:
        """Outputs on this rank's contiguous shard, last batch padded with a repeat of its first
        sample; segmentation keeps the predicted mask (logits > 0) as uint8."""
        n = len(next(iter(self.arrays.values())))
        shard = np.array_split(np.arange(n), self.world)[self.rank]
        path, out = Path(self.job["dir"]) / f"out-{self.name}-r{self.rank}.npy", None
        for lo in range(0, len(shard), batch_size):
            idx = shard[lo:lo + batch_size]
            padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])]) if len(idx) < batch_size else idx
            y = np.asarray(self.backend(_take(self.arrays, padded))[:len(idx)])
            y = (y > 0).astype(np.uint8) if self.job["task"] == "segmentation" else y.astype(np.float32)
            if out is None:  # written batch by batch into the file: the outputs never sit in this process's heap
                out = np.lib.format.open_memmap(path, mode="w+", dtype=y.dtype, shape=(len(shard), *y.shape[1:]))
            out[lo:lo + len(idx)] = y
        if out is None:
            return {"outputs": None, "count": 0}
        out.flush()
        del out
        # the accuracy pass touched the whole split: its peak is kept apart, the split unmapped, and the
        # peak reset, so the serving peak (load + timed rounds) holds the model and a batch, not the test set
        self.peak_mb["accuracy"] = trackers.peak_rss_mb()[0]
        self._map_inputs()
        trackers.reset_peak_rss()
        return {"outputs": str(path), "count": int(len(shard))}

    def op_finish(self) -> dict:
        """peak_rss_mb: the whole run's peak (the accuracy pass over the memory-mapped test split
        included); peak_rss_serving_mb: load and timed rounds only, without the test inputs."""
        rss, method = trackers.peak_rss_mb()
        peaks = getattr(self, "peak_mb", {})
        inputs_mb = sum(a.nbytes for a in self.arrays.values()) / 2**20 if getattr(self, "arrays", None) else None
        self._close()
        return {"peak_rss_mb": max([rss, *peaks.values()]), "peak_rss_serving_mb": max(rss, peaks.get("load", 0.0)),
                "accuracy_inputs_mb": inputs_mb, "rss_method": method, "torch_imported": "torch" in sys.modules}

    def _close(self):
        if self.backend is not None:
            self.backend.close()
        self.backend = None
        import gc
        gc.collect()


def main() -> None:
    """Process entry (see module docstring): settings JSON as argv[1], then one command per line."""
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by libraries goes to stderr
    sys.stdout = sys.stderr
    settings = json.loads(sys.argv[1])
    try:
        worker = Worker(settings["name"], settings)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        worker, boot_error = None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    for line in sys.stdin:
        op, kw = json.loads(line)
        if op == "exit":
            break
        try:
            if worker is None:
                raise RuntimeError(boot_error)
            payload = ["ok", worker.handle(op, kw)]
        except BaseException as e:  # noqa: BLE001 - reported to the parent, the worker lives on
            payload = ["error", f"{type(e).__name__}: {e}",
                       traceback.format_exc() if os.environ.get("SEGVAE_BENCH_DEBUG") else ""]
        reply.write(json.dumps(payload, default=jsonable) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
