"""MLPerf-style load scenarios and SCENARIOS, the registry the bench reads (the interface is
`harness.bench.scenario_base.Scenario`). Each takes a zero-argument callable `run()` (one query on
inputs the backend already holds; on a GPU it synchronizes) and timing settings, and returns a
`Measurement` of ONE round; none of them knows about backends or models.

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
from typing import Callable

import numpy as np

from harness.bench.scenario_base import Measurement, Scenario, latency_stats

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


class SingleStream(Scenario):
    name, tail = "single-stream", "p90"

    def measure(self, run, batch_size, *, timing, warmup, rate=None, bound_ms=None, seed=0):
        return single_stream(run, warmup=warmup, **timing)


class Offline(Scenario):
    name, all_ranks = "offline", True

    def batch_sizes(self, cfg) -> list[int]:
        return list(cfg.batch_sizes)

    def measure(self, run, batch_size, *, timing, warmup, rate=None, bound_ms=None, seed=0):
        return offline(run, batch_size, warmup=warmup, **timing)


class Server(Scenario):
    name, tail, paced = "server", "p99", True

    def measure(self, run, batch_size, *, timing, warmup, rate=None, bound_ms=None, seed=0):
        return server(run, rate=rate, latency_bound_ms=bound_ms, warmup=warmup, seed=seed, **timing)


# name -> scenario, in the order the bench measures and lists them
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (SingleStream(), Offline(), Server())}
