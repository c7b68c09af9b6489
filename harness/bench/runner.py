"""`segvae bench`: speed, resource use and accuracy of every backend on trained runs, in one file.

Pieces (each swappable): backends.py (how to run a model), scenarios.py (how to load it),
peak.py (what the machine can do), and this module, which joins them:

  1. main process: pick backends (unavailable ones go to `skipped` with the reason), probe the
     matmul peak, and per run: load config, export to ONNX when RUN/onnx/ is missing, write the
     accuracy inputs (the REAL test split) to a scratch folder as .npy, count FLOPs per sample.
  2. per backend: a fresh `python -c` worker process (isolate=True, so torch's and ORT's thread pools never
     share a process) or the current process runs every scenario and the accuracy pass on every
     run, and reports measurements, accuracy statistics and peak RSS.
  3. main process: reduce accuracy (Dice/IoU via harness.metrics over all test images; CVAE errors
     vs torch-eager on identical inputs), build one flat record per (run, backend, scenario,
     batch size[, rank]), write bench.json atomically, print a table, print the path last.

Under `accelerate launch` with N processes each rank runs its share of the offline work (the
offline loops start together behind a barrier) and of the accuracy samples; rank 0 runs the
single-stream and server scenarios alone (other ranks wait), gathers everything
(torch.distributed.gather_object) and writes per-rank records plus aggregate records (rank null,
samples_per_s summed over ranks). Subprocess isolation is off when distributed.
The bench.json schema is documented in schema.md beside this file.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from harness.bench import scenarios as sc
from harness.bench.backends import INPUT_NAMES, REGISTRY, onnx_path
from harness.errors import UserError

SCHEMA_VERSION = 1
REFERENCE = "torch-eager"
ALL_SCENARIOS = tuple(sc.SCENARIOS)
LATENCY_KEYS = sc.LATENCY_KEYS
ORT_OPT_LEVELS = ("all", "extended", "basic", "disable")  # the keys of exports.session.OPT_LEVELS
RECORD_FIELDS = (
    "run", "experiment", "task", "backend", "precision", "scenario", "batch_size", "samples_per_s",
    "latency_ms", "flops_per_sample", "gflops_per_s", "pct_of_peak", "peak_rss_mb", "model_bytes",
    "threads", "isolated", "compile_s", "dice", "iou", "dice_delta", "max_abs_err", "mean_abs_err",
    "judge_acc", "rank", "world_size",
)
SERVER_FIELDS = ("target_rate", "achieved_rate", "latency_bound_ms", "bound_met")
ENV_FIELDS = ("cpu_model", "cores_logical", "cores_physical", "platform", "python", "torch", "onnxruntime",
              "accelerate", "numpy", "git_commit", "command", "time")


@dataclass
class BenchConfig:
    backends: list[str] | None = None            # None: every registered backend that is available
    scenarios: list[str] = field(default_factory=lambda: ["single-stream", "offline"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    threads: int | None = None                   # None: os.cpu_count() (divided by world size when distributed)
    min_queries: int = 20
    min_duration: float = 1.0                    # seconds per measurement
    warmup: int = 3
    server_rate: float | None = None             # None: 0.5 x measured single-stream throughput
    latency_bound_ms: float | None = None        # None: 2 x single-stream p99
    accuracy_samples: int | None = None          # None: the whole test split
    isolate: bool = True                         # one fresh worker process per backend
    peak_size: int = 2048                        # matmul probe size
    peak_reps: int = 5
    seed: int = 0                                # label-swap inputs and server arrivals
    ort_opt_level: str = "all"                   # ONNX Runtime graph optimization: all|extended|basic|disable

    def validate(self) -> "BenchConfig":
        if self.backends is not None:
            unknown = [b for b in self.backends if b not in REGISTRY]
            if unknown or not self.backends:
                raise UserError(f"unknown backend(s) {unknown}: expected some of {', '.join(REGISTRY)}")
        unknown = [s for s in self.scenarios if s not in ALL_SCENARIOS]
        if unknown or not self.scenarios:
            raise UserError(f"unknown scenario(s) {unknown}: expected some of {', '.join(ALL_SCENARIOS)}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise UserError(f"invalid batch_sizes={self.batch_sizes!r}: expected positive integers")
        for name in ("min_queries", "warmup", "peak_size", "peak_reps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "warmup" else 1):
                raise UserError(f"invalid {name}={v!r}: expected a {'non-negative' if name == 'warmup' else 'positive'} integer")
        for name in ("min_duration", "server_rate", "latency_bound_ms"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise UserError(f"invalid {name}={v!r}: expected a positive finite number")
        for name in ("threads", "accuracy_samples"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"invalid {name}={v!r}: expected a positive integer")
        if self.ort_opt_level not in ORT_OPT_LEVELS:
            raise UserError(f"invalid ort_opt_level={self.ort_opt_level!r}: expected one of {', '.join(ORT_OPT_LEVELS)}")
        self.batch_sizes = sorted(dict.fromkeys(self.batch_sizes))
        return self

    @property
    def accuracy_batch_size(self) -> int:
        """Accuracy runs at the largest offline batch size (last batch padded), so compiled
        backends need no extra graph."""
        return max(self.batch_sizes)


# =========================================================================== distributed
class Dist:
    """rank/world from accelerate's PartialState when launched with WORLD_SIZE > 1, else 0/1."""

    def __init__(self):
        self.rank, self.world, self.local_rank = 0, 1, 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") \
                or not torch.cuda.is_available()
            state = PartialState(cpu=cpu)
            self.rank, self.world = state.process_index, state.num_processes
            self.local_rank = state.local_process_index

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            import torch.distributed as td
            td.barrier()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as td
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        if self.world == 1:
            return [obj]
        import torch.distributed as td
        out = [None] * self.world if self.main else None
        td.gather_object(obj, out, dst=0)
        return out

    def close(self):
        if self.world > 1:
            import torch.distributed as td
            if td.is_initialized():
                td.barrier()
                td.destroy_process_group()


# =========================================================================== helpers
def _log(msg: str, rank: int | None = None):
    prefix = "[bench]" if rank is None else f"[bench r{rank}]"
    print(f"{prefix} {msg}", flush=True)


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> tuple[float, str]:
    """(peak resident MB of this process, method). VmHWM (reset per run by clear_refs) on Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (kb / 1024.0 if sys.platform != "darwin" else kb / 2**20), "ru_maxrss"


def _take(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.take(v, idx, axis=0)) for k, v in arrays.items()}


def _batch(arrays: Mapping[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    n = len(next(iter(arrays.values())))
    return _take(arrays, np.arange(b) % n)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return None


def env_info(argv: list[str] | None = None) -> dict:
    try:
        import psutil
        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import numpy
    import torch
    return {
        "cpu_model": _cpu_model(), "cores_logical": os.cpu_count(), "cores_physical": physical,
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "accelerate": _version("accelerate"),
        "numpy": numpy.__version__, "git_commit": commit,
        "command": _command(argv if argv else sys.argv),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _command(argv: list[str]) -> str:
    import shlex

    argv = [str(a) for a in argv]
    if argv and argv[0].endswith(os.path.join("harness", "__main__.py")):
        argv = ["python", "-m", "harness", *argv[1:]]
    return shlex.join(argv)


def flops_per_sample(task: str, model, inputs: Mapping[str, np.ndarray]) -> int:
    """torch.utils.flop_counter total at batch 1 (FLOPs = 2 x MACs; convs and matmuls only)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models import LabelSwap

    net = LabelSwap(model) if task == "cvae" else model
    args = [torch.from_numpy(np.ascontiguousarray(inputs[k][:1])) for k in INPUT_NAMES[task]]
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net.eval()(*args)
    return int(fc.get_total_flops())


# =========================================================================== per-run preparation
def _prepare_run(run_dir: Path, index: int, cfg: BenchConfig, data_root, workdir: Path,
                 want_onnx: bool) -> dict:
    """Accuracy inputs to .npy, ONNX export when missing, FLOPs. Returns a picklable job dict."""
    import torch

    from harness.run_folder import load_run
    from harness.data import build_splits
    from harness.labelswap import swap_inputs

    exp_cfg, model = load_run(run_dir)
    job = {"run": run_dir.name, "run_dir": str(run_dir), "experiment": exp_cfg.name, "task": exp_cfg.task,
           "dataset": exp_cfg.dataset, "dir": str(workdir / f"run{index}"), "onnx_error": None}
    test = build_splits(exp_cfg, data_root)["test"]
    n = len(test) if cfg.accuracy_samples is None else min(cfg.accuracy_samples, len(test))
    if n == 0:
        raise UserError(f"{run_dir}: the test split of the data root is empty")
    if exp_cfg.task == "segmentation":
        items = [test[i] for i in range(n)]
        arrays = {"image": torch.stack([x for x, _ in items]).numpy(),
                  "mask": torch.stack([m for _, m in items]).numpy()}
    else:
        latent = int(exp_cfg.model.get("latent_dim", 16))
        s = swap_inputs(test, n=n, num_classes=exp_cfg.num_classes, latent_dim=latent, seed=cfg.seed, spread=False)
        arrays = {k: v.numpy() for k, v in s.items()}
    Path(job["dir"]).mkdir(parents=True)
    for k, v in arrays.items():
        np.save(Path(job["dir"]) / f"{k}.npy", np.ascontiguousarray(v))
    job["n"] = int(n)
    job["flops_per_sample"] = flops_per_sample(exp_cfg.task, model, arrays)
    if want_onnx and not (run_dir / "onnx").is_dir():
        _log(f"{run_dir.name}: no onnx/ folder, exporting (fp32 + int8)")
        try:
            from harness.export_stage import export_run
            export_run(run_dir, quantize="int8", data_root=data_root)
        except Exception as e:  # ORT backends of this run are skipped with this reason
            job["onnx_error"] = f"ONNX export failed: {type(e).__name__}: {e}"
            _log(f"{run_dir.name}: {job['onnx_error']}")
    return job


# =========================================================================== worker
def measure_backend(name: str, jobs: list[dict], settings: dict, rank: int = 0, world: int = 1,
                    dist: Dist | None = None, speed: bool = True) -> list[dict]:
    """Run every scenario and the accuracy pass of one backend on every run. Picklable in and out.

    Per job: {"run", "error", "measurements": [...], "acc_stats" (segmentation) | "outputs" (cvae: .npy
    path of this rank's shard), "peak_rss_mb", "rss_method", "model_bytes", "compile_s": {bs: s}}."""
    import torch

    from harness.run_folder import load_config
    from harness.metrics import seg_stats

    cfg = BenchConfig(**settings["cfg"])
    threads = settings["threads"]
    torch.set_num_threads(threads)
    dist = dist or _NoDist()
    results = []
    cls = REGISTRY[name]
    for job in jobs:
        res = {"run": job["run"], "error": None, "measurements": [], "compile_s": {}}
        results.append(res)
        if cls.family == "ort" and job.get("onnx_error"):
            res["error"] = job["onnx_error"]
            continue
        if cls.family == "ort" and not onnx_path(job["run_dir"], job["task"], cls.precision).is_file():
            res["error"] = (f"{onnx_path(job['run_dir'], job['task'], cls.precision)} not found "
                            f"(run `segvae export RUN{' --quantize int8' if cls.precision == 'int8' else ''}`)")
            continue
        import gc
        gc.collect()
        _reset_peak_rss()
        backend = None
        try:
            backend = cls(opt_level=cfg.ort_opt_level) if cls.family == "ort" else cls()
            backend.load(job["run_dir"], load_config(job["run_dir"]), threads)
            arrays = {k: np.load(Path(job["dir"]) / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in INPUT_NAMES[job["task"]]}
            tag = f"{job['run']} | {name}"

            def prep(b):
                c = backend.prepare(b)
                if c is not None:
                    res["compile_s"][b] = c
                return c

            if speed:
                _speed(backend, arrays, cfg, res, prep, tag, rank, world, dist)
            # ---------------------------------------------------------- accuracy (this rank's shard)
            shard = np.array_split(np.arange(job["n"]), world)[rank]
            ab = cfg.accuracy_batch_size
            prep(ab)
            outs, stats = [], []
            masks = np.load(Path(job["dir"]) / "mask.npy", mmap_mode="r", allow_pickle=False) if job["task"] == "segmentation" else None
            for lo in range(0, len(shard), ab):
                idx = shard[lo:lo + ab]
                padded = np.concatenate([idx, np.full(ab - len(idx), idx[0])]) if len(idx) < ab else idx
                y = backend(_take(arrays, padded))[:len(idx)]
                if masks is not None:
                    stats.append(seg_stats(torch.from_numpy(np.ascontiguousarray(y)),
                                           torch.from_numpy(np.ascontiguousarray(masks[idx]))).numpy())
                else:
                    outs.append(np.asarray(y, dtype=np.float32))
            if masks is not None:
                res["acc_stats"] = np.concatenate(stats) if stats else np.zeros((0, 4))
            else:
                res["outputs"] = None  # an empty shard (fewer samples than ranks) has none
                if outs:
                    path = Path(job["dir"]) / f"out-{name}-r{rank}.npy"
                    np.save(path, np.concatenate(outs))
                    res["outputs"] = str(path)
            if speed:
                _log(f"{tag} | accuracy on {len(shard)} test samples", rank if world > 1 else None)
            res["model_bytes"] = backend.model_file_size()
        except Exception as e:
            res["error"] = f"{type(e).__name__}: {e}"
            if os.environ.get("SEGVAE_BENCH_DEBUG"):
                traceback.print_exc()
            _log(f"{job['run']} | {name} failed: {res['error']}", rank if world > 1 else None)
        finally:
            if backend is not None:
                backend.close()
            del backend
            gc.collect()
        res["peak_rss_mb"], res["rss_method"] = _peak_rss_mb()
    return results


class _NoDist:
    def barrier(self):
        pass


def _speed(backend, arrays, cfg: BenchConfig, res: dict, prep: Callable, tag: str, rank: int, world: int, dist):
    """Scenarios for one backend on one run; rank 0 alone does single-stream and server."""
    r = rank if world > 1 else None
    timing = {"min_duration": cfg.min_duration, "warmup": cfg.warmup}
    ss = None
    if "single-stream" in cfg.scenarios and rank == 0:
        prep(1)
        ss = sc.single_stream(backend, _batch(arrays, 1), min_queries=cfg.min_queries, **timing)
        res["measurements"].append(_pack(ss))
        _log(f"{tag} | single-stream: p50 {ss.latency_ms['p50']:.2f} ms, p99 {ss.latency_ms['p99']:.2f} ms", r)
    if "offline" in cfg.scenarios:
        for b in cfg.batch_sizes:
            prep(b)
            inputs = _batch(arrays, b)
            dist.barrier()  # ranks measure together: their throughputs add up
            m = sc.offline(backend, inputs, b, min_queries=max(1, math.ceil(cfg.min_queries / world)), **timing)
            res["measurements"].append(_pack(m))
            _log(f"{tag} | offline bs={b}: {m.samples_per_s:.1f} samples/s", r)
    if "server" in cfg.scenarios and rank == 0:
        prep(1)
        if ss is None and (cfg.server_rate is None or cfg.latency_bound_ms is None):
            ss = sc.single_stream(backend, _batch(arrays, 1), min_queries=max(5, cfg.min_queries // 2),
                                  min_duration=cfg.min_duration / 2, warmup=cfg.warmup)
        rate = cfg.server_rate or 0.5 * ss.samples_per_s
        bound = cfg.latency_bound_ms or 2.0 * ss.latency_ms["p99"]
        m = sc.server(backend, _batch(arrays, 1), rate=rate, latency_bound_ms=bound,
                      min_queries=cfg.min_queries, seed=cfg.seed, **timing)
        res["measurements"].append(_pack(m))
        _log(f"{tag} | server @ {rate:.1f}/s: p99 {m.latency_ms['p99']:.2f} ms (bound {bound:.2f}), "
             f"achieved {m.extra['achieved_rate']:.1f}/s", r)


def _pack(m: sc.Measurement) -> dict:
    return {"scenario": m.scenario, "batch_size": m.batch_size, "latencies_s": list(m.latencies_s),
            "duration_s": m.duration_s, "samples": m.samples, "extra": dict(m.extra)}


def _to_json(obj) -> str:
    """Worker IPC as JSON (never pickle): arrays travel as lists with their dtype."""
    def default(o):
        if isinstance(o, np.ndarray):
            return {"__ndarray__": o.tolist(), "dtype": str(o.dtype), "shape": list(o.shape)}
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot send {type(o).__name__} to a bench worker")
    return json.dumps(obj, default=default)


def _from_json(text: str):
    def hook(d):
        if "__ndarray__" in d:
            return np.asarray(d["__ndarray__"], dtype=d["dtype"]).reshape(d["shape"])
        return d
    return json.loads(text, object_hook=hook)


def _subprocess_main(spec_path: str) -> None:
    """Entry of an isolated worker: `python -c "...; _subprocess_main(SPEC)"` (see _isolated)."""
    spec_path = Path(spec_path)
    name, jobs, settings = _from_json(spec_path.read_text())
    try:
        payload = ["ok", measure_backend(name, jobs, settings)]
    except BaseException as e:  # noqa: BLE001 - report anything to the parent
        payload = ["error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"]
    tmp = spec_path.with_suffix(".out.tmp")
    tmp.write_text(_to_json(payload))
    os.replace(tmp, spec_path.with_suffix(".out"))


OMP_WAIT_POLICY = "PASSIVE"


def _configure_omp() -> str:
    """torch's OpenMP threads wait passively (like ORT sessions, which run with spinning off) unless
    the environment says otherwise. With the default active wait, 2 threads on 2 cores that another
    process also uses made a small UNet forward ~100x slower (1 s vs 5-12 ms) on the dev machine.
    Set here when torch is not imported yet (the CLI) and always in isolated workers' environment.
    Returns the policy the workers run with."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    return os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


def _isolated(name: str, jobs: list[dict], settings: dict, scratch: Path) -> list[dict]:
    """Run measure_backend in a fresh interpreter (not multiprocessing: a fresh `python -c` never
    re-imports the caller's __main__, so an unguarded script calling run_bench is safe).
    Arguments and results travel as JSON in the bench's private scratch folder."""
    spec = scratch / f"worker-{name}.json"
    spec.write_text(_to_json([name, jobs, settings]))
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    code = f"from harness.bench.runner import _subprocess_main; _subprocess_main({str(spec)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL)
    out = spec.with_suffix(".out")
    if not out.is_file():
        raise RuntimeError(f"worker process for {name} died (exit code {proc.returncode})")
    status, payload = _from_json(out.read_text())
    if status != "ok":
        raise RuntimeError(f"worker process for {name} failed: {payload}")
    return payload


# =========================================================================== assembly
def _lat_from(latencies: list[float]) -> dict | None:
    return sc.latency_stats(latencies)


def _judge_for(judge_fn, job: dict):
    if judge_fn is None:
        return None
    if isinstance(judge_fn, Mapping):
        return judge_fn.get(job["experiment"]) or judge_fn.get(job["dataset"])
    return judge_fn


def _accuracy(job: dict, per_rank: list[dict], ref: dict | None, judge_fn, inputs_dir: Path) -> dict:
    """Accuracy fields of one (run, backend) from its ranks' results; ref = torch-eager's fields."""
    from harness.metrics import seg_metrics
    import torch

    acc = {k: None for k in ("dice", "iou", "dice_delta", "max_abs_err", "mean_abs_err", "judge_acc")}
    if job["task"] == "segmentation":
        stats = np.concatenate([r["acc_stats"] for r in per_rank])
        m = seg_metrics(torch.from_numpy(stats))
        acc["dice"], acc["iou"] = m["dice"], m["iou"]
        acc["_count"] = m["count"]
        if ref is not None and ref.get("dice") is not None:
            acc["dice_delta"] = acc["dice"] - ref["dice"]
    else:
        out = np.concatenate([np.load(r["outputs"], allow_pickle=False) for r in per_rank if r.get("outputs")])
        acc["_outputs"] = out
        acc["_count"] = int(out.shape[0])
        if ref is not None and ref.get("_outputs") is not None:
            diff = np.abs(out.astype(np.float64) - ref["_outputs"].astype(np.float64))
            acc["max_abs_err"], acc["mean_abs_err"] = float(diff.max()), float(diff.mean())
        judge = _judge_for(judge_fn, job)
        if judge is not None:
            try:
                acc["judge_acc"] = float(judge(out, np.load(inputs_dir / "new_label.npy", allow_pickle=False)))
            except Exception as e:  # a broken judge must not cost the whole bench
                _log(f"{job['run']}: judge failed: {type(e).__name__}: {e}")
    return acc


def _records(job: dict, name: str, per_rank: list[dict], acc: dict, peak: dict, threads: int, isolated: bool,
             world: int) -> list[dict]:
    cls = REGISTRY[name]
    peak_g = (peak.get(cls.precision) or {}).get("gflops_per_s") if cls.family == "torch" or \
        name in ("ort-fp32", "ort-int8") else None
    flops = job["flops_per_sample"]
    model_bytes = next((r.get("model_bytes") for r in per_rank if r.get("model_bytes") is not None), None)
    compile_s: dict = {}
    for r in per_rank:
        for b, s in r["compile_s"].items():
            compile_s[int(b)] = max(compile_s.get(int(b), 0.0), s)
    acc_public = {k: v for k, v in acc.items() if not k.startswith("_")}

    def rec(scenario, bs, sps, lat, rss, rank, n_proc, extra=None):
        g = flops * sps / 1e9 if sps is not None else None
        pct = 100.0 * g / (peak_g * n_proc) if g is not None and peak_g else None
        d = {"run": job["run"], "experiment": job["experiment"], "task": job["task"], "backend": name,
             "precision": cls.precision, "scenario": scenario, "batch_size": bs, "samples_per_s": sps,
             "latency_ms": lat, "flops_per_sample": flops, "gflops_per_s": g, "pct_of_peak": pct,
             "peak_rss_mb": rss, "model_bytes": model_bytes, "threads": threads, "isolated": isolated,
             "compile_s": compile_s.get(bs), **acc_public, "rank": rank, "world_size": world}
        if scenario == "server":
            d.update({k: (extra or {}).get(k) for k in SERVER_FIELDS})
            d["queries_offered"] = (extra or {}).get("queries_offered")
            d["queries_served"] = (extra or {}).get("queries_served")
        return d

    out = []
    ranks = list(range(len(per_rank)))
    for rank, r in zip(ranks, per_rank):
        for m in r["measurements"]:
            sps = m["samples"] / m["duration_s"] if m["duration_s"] > 0 else 0.0
            whole_job = world == 1 or m["scenario"] != "offline"  # single-stream/server run on rank 0 alone
            d = rec(m["scenario"], m["batch_size"], sps, _lat_from(m["latencies_s"]), r["peak_rss_mb"],
                    None if whole_job else rank, 1, m["extra"])
            d["queries"] = len(m["latencies_s"])
            d["duration_s"] = m["duration_s"]
            out.append(d)
    if world > 1:  # aggregate offline records: throughput summed over ranks
        for bs in sorted({m["batch_size"] for r in per_rank for m in r["measurements"] if m["scenario"] == "offline"}):
            ms = [(r, m) for r in per_rank for m in r["measurements"] if m["scenario"] == "offline" and m["batch_size"] == bs]
            sps = sum(m["samples"] / m["duration_s"] for _, m in ms)
            lat = [x for _, m in ms for x in m["latencies_s"]]
            rss = sum(r["peak_rss_mb"] for r, _ in ms)
            d = rec("offline", bs, sps, _lat_from(lat), rss, None, len(ms))
            d["queries"] = len(lat)
            d["duration_s"] = max(m["duration_s"] for _, m in ms)
            out.append(d)
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(records: list[dict]) -> str:
    cols = [("run", 18, "s"), ("backend", 19, "s"), ("prec", 4, "s"), ("scenario", 13, "s"), ("bs", 3, "d"),
            ("rank", 4, "s"), ("samples/s", 10, ".1f"), ("p50 ms", 9, ".2f"), ("p99 ms", 9, ".2f"),
            ("GFLOP/s", 8, ".1f"), ("%peak", 6, ".1f"), ("RSS MB", 7, ".0f"), ("compile", 7, ".1f"),
            ("accuracy", 24, "s")]
    lines = ["  ".join(f"{c:>{w}}" if f != "s" else f"{c:<{w}}" for c, w, f in cols)]
    for r in records:
        lat = r["latency_ms"] or {}
        if r["task"] == "segmentation":
            acc = "-" if r["dice"] is None else f"dice {r['dice']:.4f} ({_fmt(r['dice_delta'], '+.4f')})"
        else:
            acc = "-" if r["max_abs_err"] is None else f"max|d| {r['max_abs_err']:.2e}"
            if r.get("judge_acc") is not None:
                acc += f" judge {r['judge_acc']:.3f}"
        rank = "all" if r["rank"] is None else str(r["rank"])
        vals = [r["run"][:18], r["backend"], r["precision"], r["scenario"], r["batch_size"], rank,
                r["samples_per_s"], lat.get("p50"), lat.get("p99"), r["gflops_per_s"], r["pct_of_peak"],
                r["peak_rss_mb"], r["compile_s"], acc]
        lines.append("  ".join((f"{v:<{w}}" if f == "s" else f"{_fmt(v, f):>{w}}") for v, (_, w, f) in zip(vals, cols)))
    return "\n".join(lines)


# =========================================================================== entry point
def run_bench(run_dirs, cfg: BenchConfig | None = None, data_root=None, out="bench.json",
              argv: list[str] | None = None, judge_fn=None) -> dict:
    """Benchmark run directories; writes `out` (bench.json) and returns the document (on every rank;
    non-zero ranks of a distributed run return {}).

    judge_fn: optional callable(images [N,C,H,W] float32 in [0,1], new_labels [N] int64) -> float
    (e.g. a classifier's accuracy on label-swapped samples) applied to each backend's CVAE outputs;
    or a mapping experiment-or-dataset name -> callable. Its value is `judge_acc`."""
    cfg = (cfg or BenchConfig()).validate()
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(r) for r in run_dirs]
    for r in run_dirs:
        if not r.is_dir():
            raise UserError(f"run directory not found: {r}")
    if len({r.name for r in run_dirs}) != len(run_dirs):
        raise UserError("run directories must have distinct folder names (records are keyed by them)")
    omp_policy = _configure_omp()
    dist = Dist()
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // dist.world)
    isolated = bool(cfg.isolate and dist.world == 1)
    t_start = time.perf_counter()

    # ----------------------------------------------------------- backends
    names = list(cfg.backends) if cfg.backends is not None else list(REGISTRY)
    if REFERENCE in names:  # reference first: the others are compared against it
        names.remove(REFERENCE)
        names.insert(0, REFERENCE)
    skipped: dict[str, str] = {}
    chosen = []
    for n in names:
        ok, why = REGISTRY[n].available()
        if ok:
            chosen.append(n)
        else:
            skipped[n] = why
            if dist.main:
                _log(f"skipping {n}: {why}")
    if not chosen:
        raise UserError(f"no backend available: {skipped}")
    want_onnx = any(REGISTRY[n].family == "ort" for n in chosen)

    # ----------------------------------------------------------- main: peak, inputs, exports, FLOPs
    import torch
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    if not isolated:  # in process: whatever the process started with
        omp_policy = os.environ.get("OMP_WAIT_POLICY") or "unset (libgomp default: active)"
    try:
        return _bench(run_dirs, cfg, data_root, out, argv, judge_fn, dist, threads, isolated, chosen, skipped,
                      want_onnx, t_start, omp_policy)
    finally:
        torch.set_num_threads(old_threads)


def _bench(run_dirs, cfg, data_root, out, argv, judge_fn, dist, threads, isolated, chosen, skipped, want_onnx,
           t_start, omp_policy) -> dict:
    peak, jobs, workdir, env = None, None, None, None
    if dist.main:
        env = env_info(argv)
        _log(f"matmul peak probe ({cfg.peak_size}^2, {threads} threads)")
        peak = _probe(threads, cfg)
        _log("peak GFLOP/s: " + ", ".join(f"{p} {_fmt(peak[p]['gflops_per_s'], '.0f')}" for p in ("fp32", "bf16", "int8")))
        workdir = Path(tempfile.mkdtemp(prefix="segvae-bench-"))
        try:
            jobs = [_prepare_run(r, i, cfg, data_root, workdir, want_onnx) for i, r in enumerate(run_dirs)]
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    jobs = dist.broadcast(jobs)
    settings = {"cfg": asdict(cfg), "threads": threads}

    try:
        # ------------------------------------------------------- measure
        per_backend: dict[str, list[dict]] = {}
        for n in chosen:
            if dist.main:
                _log(f"backend {n} ({'own process' if isolated else 'in process'}, {threads} threads)")
            try:
                if isolated:
                    per_backend[n] = _isolated(n, jobs, settings, workdir)
                else:
                    per_backend[n] = measure_backend(n, jobs, settings, dist.rank, dist.world, dist)
            except Exception as e:
                skipped[n] = f"{type(e).__name__}: {e}"
                _log(f"{n} failed: {skipped[n]}")
        ref_only = None
        if REFERENCE not in per_backend:  # accuracy needs a reference even when torch-eager is not benched
            ref_only = measure_backend(REFERENCE, jobs, settings, dist.rank, dist.world, dist, speed=False)
        gathered = dist.gather({"per_backend": per_backend, "ref_only": ref_only})
        if not dist.main:
            dist.close()
            return {}

        # ------------------------------------------------------- assemble (main)
        records = []
        for j, job in enumerate(jobs):
            ref_ranks = [g["per_backend"][REFERENCE][j] if REFERENCE in g["per_backend"] else g["ref_only"][j]
                         for g in gathered]
            ref = None
            if not any(r["error"] for r in ref_ranks):
                ref = _accuracy(job, ref_ranks, None, None, Path(job["dir"]))
            for n in chosen:
                if any(n not in g["per_backend"] for g in gathered):  # failed as a whole (see skipped)
                    continue
                per_rank = [g["per_backend"][n][j] for g in gathered]
                err = next((r["error"] for r in per_rank if r["error"]), None)
                if err:
                    skipped[f"{job['run']}/{n}"] = err
                    continue
                acc = _accuracy(job, per_rank, None if n == REFERENCE else ref, judge_fn, Path(job["dir"]))
                if n == REFERENCE:
                    if job["task"] == "segmentation":
                        acc["dice_delta"] = 0.0
                    else:
                        acc["max_abs_err"] = acc["mean_abs_err"] = 0.0
                records.extend(_records(job, n, per_rank, acc, peak, threads, isolated, dist.world))
    finally:
        if dist.main and workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    doc = {
        "version": SCHEMA_VERSION,
        "env": env,
        "peak": peak,
        "config": {**asdict(cfg), "threads": threads, "isolation": "subprocess" if isolated else "none",
                   "world_size": dist.world, "backends_run": [n for n in chosen if n not in skipped],
                   "accuracy_batch_size": cfg.accuracy_batch_size, "omp_wait_policy": omp_policy,
                   "accuracy_samples_used": {job["run"]: job["n"] for job in jobs},
                   "rss_method": "VmHWM (reset per run via /proc/self/clear_refs)" if sys.platform.startswith("linux")
                   else "ru_maxrss", "reference": REFERENCE, "data_root": None if data_root is None else str(data_root),
                   "runs": [str(r) for r in run_dirs], "elapsed_s": time.perf_counter() - t_start},
        "skipped": skipped,
        "results": records,
    }
    from harness.io import atomic_write_json
    path = atomic_write_json(out, doc)
    print(format_table(records), flush=True)
    for k, v in skipped.items():
        print(f"skipped {k}: {v}", flush=True)
    dist.close()
    print(str(path), flush=True)
    return doc


def _probe(threads: int, cfg: BenchConfig) -> dict:
    from harness.bench.peak import probe_peak
    return probe_peak(threads=threads, n=cfg.peak_size, reps=cfg.peak_reps)
