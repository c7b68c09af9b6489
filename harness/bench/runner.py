"""`segvae bench`: speed, resource use and accuracy of every backend on trained runs, in one file.

  1. main process: resolve the device, pick backends (unavailable ones go to `skipped` with the
     reason), record provenance (trackers), probe the matmul peak, and per run: check RUN/onnx/
     against the run's config hash (stale or missing: a UserError; the bench never exports), write
     the accuracy inputs (whole test split or a stratified subset) as .npy, count FLOPs.
  2. one persistent worker per backend (launchers); per run: load, accuracy pass, then R rounds of
     every (scenario, batch size), interleaved across backends in an order shuffled per round
     (seeded, recorded in config.order); server rounds at ONE rate and bound per model (given, or
     derived from torch eager's single-stream); optional rate search.
  3. main process: accuracy figures and gate (accuracy.py), one record per (run, backend, scenario,
     batch size[, rank]) with medians, CIs, paired speed-ups, stability and LoadGen validity
     (records.py); bench.json written atomically, a table printed, the path printed last.

The A/B mode (harness/bench/ab.py) runs steps 1-3 on several runs at once: one worker per (run,
backend), all of them in the same rounds (`bench_together`).

Under `accelerate launch` every rank runs the same schedule in process: offline rounds start
together behind a barrier, rank 0 runs single-stream and server alone, accuracy is sharded; rank 0
gathers and writes per-rank records plus aggregates (rank null). Schema: schema.md.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.bench import accuracy, records, stats, trackers, verdicts
from harness.bench.backend_base import INPUT_NAMES
from harness.bench.backends import REGISTRY
from harness.bench.assemble import assemble
from harness.bench.config import REFERENCE, BenchConfig
from harness.bench.device import detect_device
from harness.bench.launchers import Dist, LocalWorker, ProcessWorker, WorkerError, interleave
from harness.bench.process_env import OMP_DEFAULT, ORT_MALLOC, SPIN_SETTLE_S, configure_omp, retain_freed_memory
from harness.bench.scenarios import SCENARIOS
from harness.errors import UserError
from harness.hardware import EMULATED, backend_status, machine
from harness.io import atomic_write_json
from harness.run_folder import BENCH_FILE, data_root_for, load_run, onnx_path



def _log(msg: str, rank: int | None = None):
    print(f"[bench{'' if rank is None else f' r{rank}'}] {msg}", flush=True)


@dataclass
class Ctx:
    """What every step of one `segvae bench` shares: settings, where it runs, which backends."""
    cfg: BenchConfig
    dist: Dist
    device: object
    threads: int
    isolated: bool
    names: list[str]                             # the backends timed, the reference first
    skipped: dict                                # backend (or run/backend) -> why it has no records
    data_root: object = None
    judge_fn: object = None
    workdir: Path | None = None
    peak: dict | None = None
    host: object = None                          # harness.hardware.Machine: what is native here
    server: dict = field(default_factory=dict)   # run -> {"rate", "bound_ms", "from"}
    omp_policy: str = ""
    t_start: float = field(default_factory=time.perf_counter)
    schedule: dict = field(default_factory=dict)  # run -> the order the lanes ran in, per round
    extend_rounds: object = None                 # the A/B mode: (lanes, rounds done) -> rounds wanted in all
    slices: int = 1                              # the A/B mode: lanes alternate this many times per round
    runs: int = 1                                # runs benched one after the other (each gets its share of the budget)
    run_start: float = 0.0                       # perf_counter when the current run's loading began
    budgets: dict = field(default_factory=dict)  # run -> its RoundBudget (what fitting the budget did)


# =========================================================================== entry point
def run_bench(run_dirs, cfg: BenchConfig | None = None, data_root=None, out=BENCH_FILE,
              argv: list[str] | None = None, judge_fn=None) -> dict:
    """Benchmark run directories; writes `out` (bench.json) and returns the document (on every rank;
    non-zero ranks of a distributed run return {}).

    judge_fn: optional callable(images [N,C,H,W] float32 in [0,1], new_labels [N] int64) -> float
    (a classifier's label-swap success) applied to each backend's CVAE outputs, or a mapping
    experiment-or-dataset name -> callable. Its value is `judge_acc` and feeds the accuracy gate."""
    cfg = (cfg or BenchConfig()).validate()
    run_dirs = existing_dirs(run_dirs)
    if len({r.name for r in run_dirs}) != len(run_dirs):
        raise UserError("run directories must have distinct folder names (records are keyed by them)")
    with bench_context(cfg, data_root, judge_fn) as ctx:
        doc = measure(ctx, run_dirs, argv)
    if not doc:
        return {}
    path = atomic_write_json(out, doc)
    print(records.format_table(doc["results"]), flush=True)
    print(verdicts.format_verdicts(doc["verdicts"]), flush=True)
    for k, v in ctx.skipped.items():
        print(f"skipped {k}: {v.splitlines()[0] if v else v}", flush=True)
    print(str(path), flush=True)
    return doc


def existing_dirs(run_dirs) -> list[Path]:
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs)]
    for r in run_dirs:
        if not r.is_dir():
            raise UserError(f"run directory not found: {r}")
    return run_dirs


@contextmanager
def bench_context(cfg: BenchConfig, data_root=None, judge_fn=None):
    """The Ctx of one bench (device, ranks, threads, backends chosen), torch's thread count set for
    its duration and restored after."""
    omp_policy = configure_omp(cfg.wait)
    try:
        device = detect_device(cfg.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    dist = Dist()
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // dist.world)
    isolated = bool(cfg.isolate and dist.world == 1)
    host = machine()
    names, skipped = _choose(cfg, device, dist, host)
    ctx = Ctx(cfg, dist, device, threads, isolated, names, skipped, data_root, judge_fn, host=host,
              slices=cfg.slices or 1)
    import torch
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    # in process: the policy torch was imported under
    ctx.omp_policy = omp_policy if isolated else os.environ.get("OMP_WAIT_POLICY", OMP_DEFAULT)
    try:
        yield ctx
    finally:
        torch.set_num_threads(old_threads)


def default_backends(host, device_kind: str = "cpu", names=None) -> tuple[list[str], dict]:
    """(the backends a default bench runs here, {left-out backend: why}): every registered backend
    (or `names`) except those whose precision this machine only emulates (harness.hardware)."""
    keep, left_out = [], {}
    for n in (list(REGISTRY) if names is None else names):
        status, why = backend_status(host, REGISTRY[n], device_kind)
        if status == EMULATED:
            left_out[n] = f"{REGISTRY[n].precision} is emulated on this machine ({why})"
        else:
            keep.append(n)
    return keep, left_out


def _choose(cfg: BenchConfig, device, dist, host) -> tuple[list[str], dict]:
    if cfg.backends is not None:  # named: run as asked, emulated or not (the records say which)
        names, skipped = list(cfg.backends), {}
    else:
        names, skipped = default_backends(host, device.kind)
        for n, why in skipped.items():
            if dist.main:
                _log(f"leaving out {n}: {why}; name it in --backends to bench it anyway")
    if REFERENCE in names:  # reference first: the others are compared against it
        names.remove(REFERENCE)
        names.insert(0, REFERENCE)
    chosen = []
    for n in names:
        ok, why = REGISTRY[n].available(device)
        if ok:
            chosen.append(n)
        else:
            skipped[n] = why
            if dist.main:
                _log(f"skipping {n}: {why}")
    if not chosen:
        raise UserError(f"no backend available: {skipped}")
    return chosen, skipped


# =========================================================================== per-run preparation
def _onnx_files(run_dir: Path, task: str, precisions: set, workdir: Path) -> dict:
    """precision -> {"path", "sha256", "note"} or None (missing; the backend is skipped, never exported)."""
    files = {}
    for p in sorted(precisions):
        path, note = onnx_path(run_dir, task, p), None
        if not path.is_file() and p == "fp16" and onnx_path(run_dir, task, "fp32").is_file():
            from exports.quantize import convert_fp16
            path = convert_fp16(onnx_path(run_dir, task, "fp32"), workdir / path.name) or path
            note = "converted by the bench from the fp32 graph (exports.quantize.convert_fp16); no fp16 file in onnx/"
        files[p] = {"path": str(path), "sha256": trackers.sha256(path), "note": note} if path.is_file() else None
    return files


def _prepare_run(ctx: Ctx, run_dir: Path, index: int) -> dict:
    from exports.onnx_export import graph_specs
    import numpy as np

    exp_cfg, model = load_run(run_dir)
    data_root = data_root_for(run_dir, ctx.data_root, "segvae bench")  # the run's own data unless told otherwise
    ort_precisions = {REGISTRY[n].onnx_key() for n in ctx.names if getattr(REGISTRY[n], "runs_onnx", False)}
    prov = trackers.onnx_provenance(run_dir, exp_cfg.hash(), need=bool(ort_precisions))
    folder = ctx.workdir / f"run{index}"
    inputs = accuracy.prepare_inputs(exp_cfg, data_root, ctx.cfg.accuracy_samples, ctx.cfg.seed, folder)
    module = graph_specs(exp_cfg, model, fold_batchnorm=True)[0].module
    arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in INPUT_NAMES[exp_cfg.task]}
    return {"run": run_dir.name, "run_dir": str(run_dir), "experiment": exp_cfg.name, "task": exp_cfg.task,
            "dataset": exp_cfg.dataset, "dir": str(folder), "data_root": str(data_root), **inputs,
            "flops_per_sample": trackers.flops_per_sample(module, exp_cfg.task, arrays),
            "run_config_hash": exp_cfg.hash(), "export_config_hash": prov["config_hash"],
            "onnx": _onnx_files(run_dir, exp_cfg.task, ort_precisions, ctx.workdir)}


# =========================================================================== measuring
def _worker_settings(ctx: Ctx) -> dict:
    bs = sorted({b for s in ctx.cfg.scenarios for b in SCENARIOS[s].batch_sizes(ctx.cfg)})
    return {"threads": ctx.threads, "device": [ctx.device.kind, ctx.device.index], "warmup": ctx.cfg.warmup,
            "ort_opt_level": ctx.cfg.ort_opt_level, "wait": ctx.cfg.wait, "batch_sizes": bs}


def _start_workers(ctx: Ctx) -> dict:
    settings = _worker_settings(ctx)
    names = ctx.names if REFERENCE in ctx.names else [REFERENCE, *ctx.names]  # accuracy needs the reference
    workers = {}
    for n in names:
        workers[n] = ProcessWorker(n, settings) if ctx.isolated else LocalWorker(n, settings, ctx.dist)
    return workers


def _generations(rounds: int, processes: int) -> list[int]:
    """The rounds after which every worker is replaced by a fresh process: `processes` blocks of
    consecutive rounds, as equal as they divide (9 rounds, 3 processes -> after rounds 3 and 6)."""
    return [r for r in range(1, rounds) if (r * processes) // rounds != ((r - 1) * processes) // rounds]


@dataclass
class BackendRun:
    """One backend on one run: its worker and what the worker answered. A failure sets `error` (the
    backend is then skipped for the rest of the run, its reason recorded); `result()` is what the
    ranks gather and assemble.py reads."""
    name: str
    worker: object                # launchers.ProcessWorker or LocalWorker
    timed: bool                   # in --backends (False: loaded only as the accuracy reference)
    job: dict = field(default_factory=dict)  # the run it measures
    side: int = 0                 # index of that run among those measured together (the A/B mode)
    error: str | None = None
    load: dict | None = None      # form, compile seconds, pids of every process it ran in
    acc: dict | None = None       # the accuracy pass's outputs
    rounds: dict = field(default_factory=dict)   # "scenario|batch size" -> one Measurement.pack() per round
    search: dict | None = None    # the server rate search
    finish: dict | None = None    # peak RSS (the highest of its processes), torch imported or not
    finish_earlier: list = field(default_factory=list)  # finish of the processes --processes replaced

    @property
    def live(self) -> bool:
        return self.error is None

    def result(self) -> dict:
        return {"error": self.error, "load": self.load, "acc": self.acc, "rounds": self.rounds,
                "search": self.search, "finish": self.finish}


def settle_s(cfg: BenchConfig) -> float:
    """Seconds to wait before a turn that follows an ORT backend's: --settle-s, else
    process_env.SPIN_SETTLE_S where idle threads spin and none where they sleep."""
    if cfg.settle_s is not None:
        return cfg.settle_s
    return SPIN_SETTLE_S if cfg.wait == "spin" else 0.0


@dataclass
class RoundBudget:
    """Fits one run's rounds into its share of the bench's time budget (--budget-min): after every
    round, as many more as the time left allows at the mean round time so far, never more than
    --rounds nor fewer than stats.MIN_ROUNDS_95. The budget counts from the run's first load (compiles
    and the accuracy pass included). A slower machine thus gets fewer rounds, labelled with their
    own coverage, instead of a bench that runs twice as long; what it did is in config.budget."""
    budget_s: float
    start: float                 # perf_counter when the run's loading began
    rounds: int                  # --rounds: the most it runs
    began: float | None = None   # perf_counter when its first round began
    round_s: float | None = None

    def begin(self) -> None:
        self.began = time.perf_counter()

    def __call__(self, lanes, done: int) -> int:
        self.round_s = (time.perf_counter() - self.began) / done
        fit = stats.rounds_in_budget(self.rounds, self.budget_s, self.began - self.start, self.round_s,
                                     stats.MIN_ROUNDS_95)
        return max(done, fit)  # over budget already: no more rounds

    def record(self, done: int) -> dict:
        return {"budget_s": self.budget_s, "rounds_began_after_s": self.began - self.start,
                "round_s": self.round_s, "rounds_asked": self.rounds, "rounds_run": done,
                "fitted": done < self.rounds}


def _live(backends: dict[str, BackendRun], timed: bool = False) -> list[str]:
    return [n for n, b in backends.items() if b.live and (b.timed or not timed)]


def _respawn(ctx: Ctx, backends: dict[str, BackendRun], workers: list[dict]) -> None:
    """A fresh process for every timed backend (its load repeated, its accuracy not): a process's
    memory layout speeds or slows all its rounds alike, which rounds in one process cannot see.
    Nothing is timed meanwhile, so the new processes start and load at once (torch-compile's from
    the run's filled inductor cache)."""
    settings = _worker_settings(ctx)
    fresh = []
    for k in _live(backends, timed=True):
        b = backends[k]
        fin = _safe(ctx, b.job, b, "finish")
        if fin is not None:
            b.finish_earlier.append(fin)
            b.worker.close()
            fresh.append(k)
    for k in fresh:
        b = backends[k]
        workers[b.side][b.name] = b.worker = ProcessWorker(b.name, settings)
        b.worker.send("load", job=b.job)
    for k in fresh:
        load = _safe(ctx, backends[k].job, backends[k], "load", sent=True)
        if load is not None:
            backends[k].load["pids"].append(load["pid"])


def _safe(ctx: Ctx, where: dict, backend: BackendRun, op: str, *, sent: bool = False, **kw):
    """worker.call (sent=True: only the reply to `op`, sent earlier); a failure drops the backend for
    this run (where: its job) with the reason in its `error`."""
    try:
        return backend.worker.receive() if sent else backend.worker.call(op, **kw)
    except WorkerError as e:
        backend.error = str(e)
        _log(f"{where['run']} | {backend.name} failed in {op}: {str(e).splitlines()[0]}",
             ctx.dist.rank if ctx.dist.world > 1 else None)
        return None


def bench_together(ctx: Ctx, jobs: list[dict], workers: list[dict], sides: list[str] | None = None
                   ) -> tuple[list[dict], list[dict]]:
    """Every backend of every job measured in the SAME rounds: load, accuracy, interleaved rounds
    (the order of all (job, backend) lanes shuffled per round with random.Random(cfg.seed)), server
    and search (one job only), finish. One job: the plain bench of one run; several (`sides` names
    them): the A/B mode, where lane keys read "SIDE/backend". workers[j]: job j's {backend: worker}.
    Returns ([job j's {backend: BackendRun.result()}], the schedule actually run: one
    {"scenario|bs": [lane, ...]} per round)."""
    cfg = ctx.cfg
    backends = {(n if sides is None else f"{sides[j]}/{n}"): BackendRun(n, w, timed=n in ctx.names, job=jobs[j], side=j)
                for j, ws in enumerate(workers) for n, w in ws.items()}
    for b in backends.values():
        cls, job = REGISTRY[b.name], b.job
        if getattr(cls, "runs_onnx", False) and not job["onnx"].get(cls.onnx_key()):
            b.error = (f"{onnx_path(job['run_dir'], job['task'], cls.onnx_key())} not found (run `segvae export "
                       f"{job['run_dir']}{' --quantize int8' if cls.onnx_key() == 'int8' else ''}`)")
            continue
        b.load = _safe(ctx, job, b, "load", job=job)
        if b.load is not None:
            b.load["pids"] = [b.load["pid"]]
    for k in _live(backends):
        backends[k].acc = _safe(ctx, backends[k].job, backends[k], "accuracy", batch_size=cfg.accuracy_batch_size)
    rank = ctx.dist.rank if ctx.dist.world > 1 else None
    what = jobs[0]["run"] if sides is None else " vs ".join(sides)
    rng = random.Random(cfg.seed)  # the same on every rank: ranks take the same turns

    slices = ctx.slices
    pause, last = settle_s(cfg), [None]  # last: the backend measured last, in any item or round

    def measure(items, rounds: int, extend_rounds=None) -> list[dict]:
        def call(k, item, r, sl=0):
            if pause and last[0] not in (None, k) and REGISTRY[backends[last[0]].name].family == "ort":
                time.sleep(pause)  # its spinning threads let go of the cores this backend is about to time
            last[0] = k
            scen, bs = item
            b = backends[k]
            extra = ctx.server.get(b.job["run"], {}) if SCENARIOS[scen].paced else {}
            timing = cfg.timing(scen, bs)
            if slices > 1:  # each slice a share of the round's stopping rule; warm-up once per round
                timing = {"min_queries": -(-timing["min_queries"] // slices),
                          "min_duration": timing["min_duration"] / slices}
            m = _safe(ctx, b.job, b, "measure", scenario=scen, batch_size=bs, timing=timing, rate=extra.get("rate"),
                      bound_ms=extra.get("bound_ms"), seed=cfg.seed + r, warmup=None if sl == 0 else 0)
            if m is None:
                return
            done = b.rounds.setdefault(f"{scen}|{bs}", [])
            if sl == 0:
                done.append(m)
            else:  # the round's slices are one measurement: their batches and times add up
                whole = done[-1]
                whole["latencies_s"] += m["latencies_s"]
                whole["duration_s"] += m["duration_s"]
                whole["samples"] += m["samples"]
        t0 = time.perf_counter()
        fresh = _generations(rounds, cfg.processes) if ctx.isolated else []
        planned = [rounds]

        def extend(r):
            planned[0] = extend_rounds(backends, r)
            return planned[0]

        def after_round(r):
            _log(f"{what}: round {r}/{planned[0]} of {', '.join(f'{s} bs{b}' for s, b in items)} "
                 f"({time.perf_counter() - t0:.0f}s){'; fresh worker processes' if r in fresh else ''}", rank)
            if r in fresh:
                _respawn(ctx, backends, workers)
        return interleave(lambda: _live(backends, timed=True), rounds, items, call, after_round, rng,
                          extend if extend_rounds is not None else None, slices if not paced_items(items) else 1)

    items = _items(cfg, paced=False)
    extend_rounds = ctx.extend_rounds
    if extend_rounds is None and cfg.budget_s and ctx.dist.world == 1:  # ranks must agree on the rounds
        extend_rounds = ctx.budgets[what] = RoundBudget(cfg.budget_s / ctx.runs, ctx.run_start, cfg.rounds)
        extend_rounds.begin()
    schedule = measure(items, cfg.rounds, extend_rounds) if items else [{} for _ in range(cfg.rounds)]
    for k in _live(backends, timed=True):
        _log(f"{what} | {k}: {len(schedule)} rounds of {len(items)} measurement(s) done", rank)
    paced = _items(cfg, paced=True)
    if paced:  # at one rate and bound per model, derived from the reference's single-stream
        if len(jobs) != 1:
            raise UserError("the server scenario is measured one run at a time (not in the A/B mode)")
        job = jobs[0]
        ctx.server[job["run"]] = ctx.dist.broadcast(_server_settings(ctx, job, backends) if ctx.dist.main else None)
        for r, orders in enumerate(measure(paced, len(schedule))):  # as many rounds, paired by index
            schedule[r].update(orders)
        if cfg.server_search:
            s = ctx.server[job["run"]]
            for n in _live(backends, timed=True):
                backends[n].search = _safe(ctx, job, backends[n], "search", start_rate=s["rate"],
                                           bound_ms=s["bound_ms"], timing=cfg.timing(paced[0][0], 1), seed=cfg.seed)
    for k in _live(backends):
        b = backends[k]
        b.finish = fin = _safe(ctx, b.job, b, "finish")
        for key in ("peak_rss_mb", "peak_rss_serving_mb"):  # the highest of its processes
            seen = [f[key] for f in b.finish_earlier if f.get(key) is not None]
            if fin is not None and seen and fin.get(key) is not None:
                fin[key] = max([fin[key], *seen])
    per_job = [{} for _ in jobs]
    for b in backends.values():
        per_job[b.side][b.name] = b.result()
    return per_job, schedule


def paced_items(items) -> bool:
    """Any paced (server) measurement among them: its queries arrive on a schedule that one round spans."""
    return any(SCENARIOS[s].paced for s, _ in items)


def _items(cfg: BenchConfig, paced: bool) -> list[tuple[str, int]]:
    """(scenario, batch size) of every asked-for scenario, in SCENARIOS order: the unpaced ones,
    or the paced ones (measured after the reference's single-stream gave them a rate)."""
    return [(name, b) for name, s in SCENARIOS.items() if name in cfg.scenarios and s.paced == paced
            for b in s.batch_sizes(cfg)]


def _server_settings(ctx: Ctx, job: dict, backends: dict[str, BackendRun]) -> dict:
    """One target rate and latency bound per model, the same for every backend: given, or 0.5 x
    the reference's median single-stream throughput and 2 x its median p90."""
    cfg = ctx.cfg
    if cfg.server_qps and cfg.latency_bound_ms:
        return {"rate": cfg.server_qps, "bound_ms": cfg.latency_bound_ms, "from": "given"}
    ref = backends.get(REFERENCE)
    rounds = ref.rounds.get("single-stream|1") if ref is not None else None
    if not rounds and ref is not None and ref.live:  # single-stream not asked for: one reference round
        m = _safe(ctx, job, ref, "measure", scenario="single-stream", batch_size=1,
                  timing=cfg.timing("single-stream", 1), seed=cfg.seed)
        rounds = [m] if m else None
    if not rounds:
        raise UserError(f"{job['run']}: the server scenario needs --server-qps and --latency-bound-ms "
                        f"when {REFERENCE} cannot run")
    fig = records.round_figures(rounds)
    return {"rate": cfg.server_qps or 0.5 * fig["samples_per_s"],
            "bound_ms": cfg.latency_bound_ms or 2.0 * fig["latency_ms"]["p90"],
            "from": f"{REFERENCE} single-stream: rate 0.5 x its samples/s, bound 2 x its p90 (medians over rounds)"}


def _peak(ctx: Ctx) -> dict:
    """The matmul probe's result: read from --peak-file when it was measured on this machine at these
    threads (`segvae run` probes once for its estimate and every bench child), else probed now."""
    from harness.bench.peak import PRECISIONS, probe_peak, reusable_peak

    cfg = ctx.cfg
    if cfg.peak_file and (found := reusable_peak(cfg.peak_file, ctx.threads)) is not None:
        _log(f"device {ctx.device}; matmul peaks from {cfg.peak_file} (this machine, {ctx.threads} threads)")
        return found
    _log(f"device {ctx.device}; matmul peak probe (up to {cfg.peak_size}^2, {ctx.threads} threads, "
         f"at most {cfg.peak_budget_s:.0f} s)")
    peak = probe_peak(threads=ctx.threads, max_n=cfg.peak_size, reps=cfg.peak_reps, budget_s=cfg.peak_budget_s)
    _log("peaks: " + ", ".join(f"{k} {peak[k]['gflops_per_s']:.0f} G/s" if peak[k]["gflops_per_s"] else
                               f"{k} {peak[k]['status']}" for k in PRECISIONS) + f" ({peak['seconds']:.1f} s)")
    if cfg.peak_file:
        atomic_write_json(cfg.peak_file, peak)
    return peak


# =========================================================================== the whole bench
def measure(ctx: Ctx, run_dirs: list[Path], argv, sides: list[str] | None = None) -> dict:
    """The bench document (not written; {} on ranks other than 0). sides=None: the runs one after
    the other, each with every backend interleaved; sides (one label per run, the A/B mode): every
    backend of every run in the same rounds, each run under its side's label, no peak probe."""
    env, jobs = None, None
    ctx.workdir = Path(tempfile.mkdtemp(prefix="segvae-bench-")) if ctx.dist.main else None
    workers: list[dict] = []
    try:
        if ctx.dist.main:
            env = trackers.env_info(argv, ctx.host)
            if sides is None:  # the A/B mode reports no % of peak
                ctx.peak = _peak(ctx)
            jobs = [_prepare_run(ctx, r, i) for i, r in enumerate(run_dirs)]
            for job, side in zip(jobs, sides or []):
                job["run"] = side
        jobs = ctx.dist.broadcast(jobs)
        if sides is None:
            workers = [_start_workers(ctx)]
            per_run = []
            ctx.runs = len(jobs)
            for i, job in enumerate(jobs):
                ctx.run_start = ctx.t_start if i == 0 else time.perf_counter()  # the first pays for the probe too
                if ctx.dist.main:
                    _log(f"{job['run']}: {len(ctx.names)} backend(s) x {ctx.cfg.rounds} interleaved rounds, "
                         f"accuracy on {job['n']} test samples ({job['subset']})")
                got, ctx.schedule[job["run"]] = bench_together(ctx, [job], workers)
                per_run.append(got[0])
        else:
            workers = [_start_workers(ctx) for _ in jobs]
            _log(f"{' vs '.join(sides)}: {len(ctx.names)} backend(s) per side x {ctx.cfg.rounds} rounds, every "
                 f"(side, backend) in every round in a shuffled order; accuracy on {jobs[0]['n']} test samples")
            per_run, ctx.schedule["A/B"] = bench_together(ctx, jobs, workers, sides)
        for ws in workers:
            for w in ws.values():
                w.close()
        workers = []
        gathered = ctx.dist.gather(per_run)
        if not ctx.dist.main:
            ctx.dist.close()
            return {}
        results = assemble(ctx, jobs, gathered)
    finally:
        for ws in workers:
            for w in ws.values():
                w.close()
        if ctx.workdir is not None:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    ctx.dist.close()
    return {
        "version": records.SCHEMA_VERSION, "env": env, "peak": ctx.peak,
        "config": {**asdict(ctx.cfg), "threads": ctx.threads, "device_resolved": str(ctx.device),
                   "isolation": "subprocess" if ctx.isolated else "none",
                   "processes_used": ctx.cfg.processes if ctx.isolated else 1, "world_size": ctx.dist.world,
                   "slices_used": ctx.slices, "settle_s_used": settle_s(ctx.cfg),
                   "budget": {run: b.record(len(ctx.schedule.get(run) or [])) for run, b in ctx.budgets.items()} or None,
                   "backends_run": [n for n in ctx.names if n not in ctx.skipped],
                   "accuracy_batch_size": ctx.cfg.accuracy_batch_size, "omp_wait_policy": ctx.omp_policy,
                   "malloc": {"torch workers": retain_freed_memory(), "ort workers": ORT_MALLOC["source"]},
                   "accuracy_samples_used": {j["run"]: j["n"] for j in jobs},
                   "accuracy_subset": {j["run"]: j["subset"] for j in jobs},
                   "accuracy_class_counts": {j["run"]: j["class_counts"] for j in jobs},
                   "timing": {s: ctx.cfg.timing(s, 1) for s in ctx.cfg.scenarios},
                   "server": ctx.server or None,
                   "order": {"seed": ctx.cfg.seed, "shuffled": "per round and measurement (random.Random(seed))",
                             "schedule": ctx.schedule},
                   "rss_method": "VmHWM (reset per run via /proc/self/clear_refs)" if sys.platform.startswith("linux")
                   else "ru_maxrss", "reference": REFERENCE,
                   "data_root": None if ctx.data_root is None else str(ctx.data_root),
                   "runs": [str(r) for r in run_dirs], "elapsed_s": time.perf_counter() - ctx.t_start},
        "skipped": ctx.skipped,
        "verdicts": verdicts.verdicts(results),
        "results": results,
    }
