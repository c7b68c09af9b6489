"""MLPerf-style load scenarios. Each takes a zero-argument callable `run()` (one query on inputs the
backend already holds; on a GPU it synchronizes) and timing settings, and returns a `Measurement`
of ONE round; none of them knows about backends or models.

  single-stream  batch 1, one query at a time; per-query latency after warm-up; runs until at
                 least `min_queries` queries AND `min_duration` seconds.
  offline        one batch size, back-to-back batches (same stopping rule, counted in batches);
                 throughput in samples/s and per-batch latency.
  server         Poisson arrivals at `rate` queries/s (batch 1, fixed seed) into a FIFO queue served
                 by one worker; latency = completion - SCHEDULED arrival (queueing included, no
                 coordinated omission). The schedule spans max(min_duration, min_queries / rate) s;
                 the run is cut at 3x that span + 1 s (unserved queries count against the rate).
  search         LoadGen's peak-performance idea: the highest Poisson rate whose p99 meets the
                 bound, by doubling then bisection over short server runs.
Percentiles are LoadGen's (sorted values at index floor(n p), no interpolation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from harness.bench.stats import loadgen_percentile

LATENCY_KEYS = ("p50", "p90", "p99", "max", "mean", "std")


def latency_stats(seconds) -> dict[str, float] | None:
    """p50/p90/p99 (LoadGen estimator), max, mean, population std; milliseconds."""
    a = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if a.size == 0:
        return None
    out = {k: loadgen_percentile(a, int(k[1:]) / 100.0) for k in ("p50", "p90", "p99")}
    out.update(max=float(a.max()), mean=float(a.mean()), std=float(a.std()))
    return out


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

    def pack(self) -> dict:
        return {"scenario": self.scenario, "batch_size": self.batch_size, "latencies_s": list(self.latencies_s),
                "duration_s": self.duration_s, "samples": self.samples, "extra": dict(self.extra)}


def _timed_loop(run: Callable, batch_size: int, min_queries: int, min_duration: float, warmup: int,
                scenario: str) -> Measurement:
    for _ in range(warmup):
        run()
    lat = []
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        lat.append(t1 - t0)
        if len(lat) >= min_queries and t1 - start >= min_duration:
            break
    return Measurement(scenario, batch_size, lat, clock() - start, len(lat) * batch_size)


def single_stream(run: Callable, *, min_queries: int, min_duration: float, warmup: int) -> Measurement:
    """run() must process batch 1."""
    return _timed_loop(run, 1, min_queries, min_duration, warmup, "single-stream")


def offline(run: Callable, batch_size: int, *, min_queries: int, min_duration: float, warmup: int) -> Measurement:
    """run() must process batch_size samples; min_queries counts batches."""
    return _timed_loop(run, batch_size, min_queries, min_duration, warmup, "offline")


def server(run: Callable, *, rate: float, latency_bound_ms: float | None, min_queries: int, min_duration: float,
           warmup: int, seed: int = 0) -> Measurement:
    """Poisson arrivals at `rate`/s, one worker, FIFO; run() processes batch 1."""
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"server rate must be a positive number, got {rate!r}")
    for _ in range(warmup):
        run()
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
        run()
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


def search_rate(run: Callable, *, start_rate: float, latency_bound_ms: float, min_queries: int,
                min_duration: float, warmup: int, seed: int = 0, steps: int = 6) -> dict:
    """Highest Poisson rate (queries/s) whose server run meets the bound: double from start_rate
    while it passes (halve while it fails), then bisect; `steps` server runs after the bracket.
    Returns {"rate": best passing rate or None, "probes": [[rate, p99_ms, met], ...]}."""
    probes = []

    def ok(rate: float) -> bool:
        m = server(run, rate=rate, latency_bound_ms=latency_bound_ms, min_queries=min_queries,
                   min_duration=min_duration, warmup=warmup, seed=seed)
        probes.append([rate, m.latency_ms["p99"] if m.latencies_s else None, bool(m.extra["bound_met"])])
        return bool(m.extra["bound_met"])

    lo, hi = None, None
    rate = start_rate
    for _ in range(12):          # bracket: lo passes, hi fails
        if ok(rate):
            lo, rate = rate, rate * 2
            if hi is not None:
                break
        else:
            hi, rate = rate, rate / 2
            if lo is not None:
                break
        if lo is not None and hi is not None:
            break
    if lo is None or hi is None:
        return {"rate": lo, "probes": probes}
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return {"rate": lo, "probes": probes}


SCENARIOS = {"single-stream": single_stream, "offline": offline, "server": server}
