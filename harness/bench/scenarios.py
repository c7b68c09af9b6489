"""MLPerf-style load scenarios. Each takes a callable `fn(inputs) -> output` and timing settings
and returns a `Measurement`; none of them knows about backends or models.

  single-stream  batch 1, one query at a time; per-query latency after warm-up; runs until at
                 least `min_queries` queries AND `min_duration` seconds.
  offline        one batch size at a time, back-to-back batches (same stopping rule); throughput
                 in samples/s and per-batch latency.
  server         Poisson arrivals at `rate` queries/s (batch 1) into a FIFO queue served by one
                 worker; latency = completion - arrival (queueing included). The arrival schedule
                 spans max(min_duration, min_queries / rate) seconds, and the run is cut at
                 3x that span + 1 s of wall time (unserved queries count against achieved_rate).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

LATENCY_KEYS = ("p50", "p90", "p99", "max", "mean", "std")


def latency_stats(seconds) -> dict[str, float] | None:
    """p50/p90/p99/max/mean/std in milliseconds (numpy linear percentiles; std is population std)."""
    a = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if a.size == 0:
        return None
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max()),
            "mean": float(a.mean()), "std": float(a.std())}


@dataclass
class Measurement:
    scenario: str
    batch_size: int
    latencies_s: list[float]           # per query (offline: per batch)
    duration_s: float                  # wall time of the measured part
    samples: int                       # samples processed in the measured part
    extra: dict = field(default_factory=dict)  # server: target_rate, achieved_rate, ...

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def latency_ms(self) -> dict | None:
        return latency_stats(self.latencies_s)


def _timed_loop(fn: Callable, inputs: dict, batch_size: int, min_queries: int, min_duration: float,
                warmup: int, scenario: str) -> Measurement:
    for _ in range(warmup):
        fn(inputs)
    lat = []
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        fn(inputs)
        t1 = clock()
        lat.append(t1 - t0)
        if len(lat) >= min_queries and t1 - start >= min_duration:
            break
    duration = clock() - start
    return Measurement(scenario, batch_size, lat, duration, len(lat) * batch_size)


def single_stream(fn: Callable, inputs: dict, *, min_queries: int, min_duration: float,
                  warmup: int) -> Measurement:
    """inputs must hold batch 1."""
    return _timed_loop(fn, inputs, 1, min_queries, min_duration, warmup, "single-stream")


def offline(fn: Callable, inputs: dict, batch_size: int, *, min_queries: int, min_duration: float,
            warmup: int) -> Measurement:
    """inputs must hold batch_size samples; min_queries counts batches."""
    return _timed_loop(fn, inputs, batch_size, min_queries, min_duration, warmup, "offline")


def server(fn: Callable, inputs: dict, *, rate: float, latency_bound_ms: float | None,
           min_queries: int, min_duration: float, warmup: int, seed: int = 0) -> Measurement:
    """Poisson arrivals at `rate`/s, one worker, FIFO; inputs hold batch 1."""
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"server rate must be a positive number, got {rate!r}")
    for _ in range(warmup):
        fn(inputs)
    span = max(min_duration, min_queries / rate)
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=max(min_queries, int(math.ceil(span * rate * 1.5)) + 8))
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals <= span]
    if arrivals.size < min_queries:  # very low rate and short span: keep at least min_queries
        arrivals = np.cumsum(gaps)[:min_queries]
    cutoff = 3 * float(arrivals[-1]) + 1.0
    clock, sleep = time.perf_counter, time.sleep
    lat, finished_at = [], 0.0
    start = clock()
    for a in arrivals:
        now = clock() - start
        if now > cutoff:
            break
        if now < a:          # queue empty: the worker idles until the next arrival
            sleep(a - now)
        fn(inputs)
        finished_at = clock() - start
        lat.append(finished_at - a)
    served = len(lat)
    duration = max(finished_at, float(arrivals[-1]) if served == arrivals.size else finished_at)
    p99 = latency_stats(lat)["p99"] if lat else None
    extra = {
        "target_rate": float(rate),
        "achieved_rate": served / duration if duration > 0 else 0.0,
        "latency_bound_ms": None if latency_bound_ms is None else float(latency_bound_ms),
        "bound_met": None if latency_bound_ms is None or p99 is None
        else bool(p99 <= latency_bound_ms and served == arrivals.size),
        "queries_offered": int(arrivals.size),
        "queries_served": served,
    }
    return Measurement("server", 1, lat, duration, served, extra)


SCENARIOS = {"single-stream": single_stream, "offline": offline, "server": server}
