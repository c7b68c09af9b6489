"""BenchConfig: every setting of `segvae bench`, validated in one place (torch-free)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from exports.accuracy_gate import DEFAULT_TARGET, check_target
from harness.bench.backends import REGISTRY, TorchEager
from harness.bench.device import resolve_device
from harness.bench.scenarios import SCENARIOS
from harness.bench.stats import min_queries as loadgen_min_queries
from harness.errors import UserError

ORT_OPT_LEVELS = ("all", "extended", "basic", "disable")  # the keys of exports.session.OPT_LEVELS
WAITS = ("spin", "passive")  # harness.bench.process_env.configure_omp says why spin is the default
REFERENCE = TorchEager.name  # the fp32 PyTorch backend every other is compared with (accuracy, speed-ups)
# LoadGen (mlperf.conf / inference_rules.adoc): every scenario >= 600 s; Offline >= 24,576 samples;
# a p90 needs 64 queries and a p99 662 (early stopping, 99% confidence, one query over)
MLPERF_MIN_DURATION = 600.0
MLPERF_OFFLINE_SAMPLES = 24576
TAIL = {n: s.tail for n, s in SCENARIOS.items() if s.tail}   # the percentile each scenario is judged on


def tail_min_queries(percentile: str) -> int:
    """LoadGen's minimum queries for a percentile key ('p90' -> 64, 'p99' -> 662, 'p50' -> 11)."""
    return loadgen_min_queries(int(percentile[1:]) / 100.0, 1)


@dataclass
class BenchConfig:
    backends: list[str] | None = None            # None: every registered backend available on the device
    scenarios: list[str] = field(default_factory=lambda: ["single-stream", "offline"])
    batch_sizes: list[int] = field(default_factory=lambda: [8])  # offline; batch 1 is single-stream's loop
    threads: int | None = None                   # None: os.cpu_count() (divided by world size when distributed)
    rounds: int = 12                             # interleaved rounds per (run, backend, scenario, batch size):
                                                 # interval [x(3), x(10)], 96.1% (docs/benchmark.md says why 12)
    budget_s: float | None = 480.0               # fewer rounds (never below 6) where 12 would not fit this many
                                                 # seconds per bench (runner.RoundBudget); None: always `rounds`
    min_queries: int = 64                        # per round: queries (offline: samples); 64 = LoadGen's p90 minimum
    min_duration: float = 0.5                    # seconds per round and measurement
    warmup: int = 3
    server_qps: float | None = None              # None: 0.5 x torch eager's single-stream throughput (per model)
    latency_bound_ms: float | None = None        # None: 2 x torch eager's single-stream p90 (per model)
    server_search: bool = False                  # find each backend's highest Poisson rate meeting the bound
    accuracy_samples: int | None = None          # None: the whole test split; N: class-stratified seeded subset
    accuracy_target: float = DEFAULT_TARGET      # gate: metric >= target x fp32 reference (0.999 strict)
    isolate: bool = True                         # one persistent worker process per backend
    device: str = "auto"                         # auto | cpu | cuda | cuda:N
    mlperf: bool = False                         # LoadGen's full durations and minimum counts
    peak_size: int = 2048                        # matmul probe: largest n (it sizes itself up to this)
    peak_reps: int = 5
    peak_budget_s: float = 15.0                  # the probe's whole time on any machine (emulated precisions untimed)
    peak_file: str | None = None                 # reuse (or write) the probe's result: `segvae run` probes once
    seed: int = 0                                # accuracy subset, label-swap inputs, server arrivals
    ort_opt_level: str = "all"                   # ONNX Runtime graph optimization: all|extended|basic|disable
    processes: int = 1                           # fresh worker processes per backend, rounds split among them
    wait: str = "spin"                           # idle threads: spin (libgomp's and ORT's defaults) | passive
    settle_s: float | None = None                # pause before a turn that follows an ORT backend's (its threads
                                                 # spin on); None: process_env.SPIN_SETTLE_S under spin, 0 passive
    slices: int | None = None                    # backends alternate this many times per round; None: 1 in the
                                                 # bench, min_duration / 50 ms in the A/B mode (ab.auto_slices)

    def validate(self) -> "BenchConfig":
        if self.backends is not None:
            unknown = [b for b in self.backends if b not in REGISTRY]
            if unknown or not self.backends:
                raise UserError(f"unknown backend(s) {unknown}: expected some of {', '.join(REGISTRY)}")
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown or not self.scenarios:
            raise UserError(f"unknown scenario(s) {unknown}: expected some of {', '.join(SCENARIOS)}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise UserError(f"invalid batch_sizes={self.batch_sizes!r}: expected positive integers")
        for name in ("min_queries", "warmup", "peak_size", "peak_reps", "rounds", "processes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "warmup" else 1):
                raise UserError(f"invalid {name}={v!r}: expected a {'non-negative' if name == 'warmup' else 'positive'} integer")
        for name in ("min_duration", "server_qps", "latency_bound_ms", "peak_budget_s", "budget_s"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise UserError(f"invalid {name}={v!r}: expected a positive finite number")
        check_target(self.accuracy_target)
        for name in ("threads", "accuracy_samples", "slices"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"invalid {name}={v!r}: expected a positive integer")
        if self.ort_opt_level not in ORT_OPT_LEVELS:
            raise UserError(f"invalid ort_opt_level={self.ort_opt_level!r}: expected one of {', '.join(ORT_OPT_LEVELS)}")
        if self.processes > self.rounds:
            raise UserError(f"invalid processes={self.processes}: expected at most rounds={self.rounds} "
                            "(every process measures at least one round)")
        if self.wait not in WAITS:
            raise UserError(f"invalid wait={self.wait!r}: expected one of {', '.join(WAITS)}")
        if self.settle_s is not None and not (isinstance(self.settle_s, (int, float)) and 0 <= self.settle_s < 60):
            raise UserError(f"invalid settle_s={self.settle_s!r}: expected seconds, at least 0 and under 60")
        try:  # syntax only here; availability is checked against the machine in run_bench
            resolve_device(self.device, True, 1 << 16)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.batch_sizes = sorted(dict.fromkeys(self.batch_sizes))
        return self

    @property
    def accuracy_batch_size(self) -> int:
        """Accuracy runs at the largest offline batch size (last batch padded), so compiled
        backends need no extra graph."""
        return max(self.batch_sizes)

    def timing(self, scenario: str, batch_size: int) -> dict:
        """Per-round stopping rule of one measurement: {"min_queries" (queries; offline: batches),
        "min_duration"}. --mlperf: LoadGen's 600 s and its minimum counts."""
        duration = MLPERF_MIN_DURATION if self.mlperf else self.min_duration
        if SCENARIOS[scenario].tail is None:  # judged on throughput: min_queries counts samples
            samples = max(self.min_queries, MLPERF_OFFLINE_SAMPLES if self.mlperf else 0)
            return {"min_queries": max(1, math.ceil(samples / batch_size)), "min_duration": duration}
        need = tail_min_queries(TAIL[scenario]) if self.mlperf else 0
        return {"min_queries": max(self.min_queries, need), "min_duration": duration}
