"""What a bench scenario is: the `Scenario` base class, the `Measurement` of one round it returns,
and LoadGen's latency statistics. scenarios.py holds the three MLPerf scenarios and the SCENARIOS
registry; a new scenario is one new file with a Scenario subclass, added to SCENARIOS there.

A scenario knows nothing about backends or models: it gets `run()`, a zero-argument callable
that runs one query on inputs the backend already holds (on a GPU it synchronizes), and decides
when queries arrive and what is recorded. Numpy only (ORT workers import it).
"""
from __future__ import annotations

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


class Scenario:
    """One load pattern. The runner measures every scenario in SCENARIOS order that --scenarios
    names, at each of its batch sizes, in interleaved rounds; the records judge it as said here."""
    name: str = "?"
    tail: str | None = None   # the latency percentile it is judged on (LoadGen); None: judged on
                              # throughput, min_queries counting samples, no per-query latency figure
    paced: bool = False       # queries arrive at a target rate with a latency bound, both derived
                              # from the reference's single-stream (so measured after it)
    all_ranks: bool = False   # under `accelerate launch` every rank measures it at once (throughputs
                              # add up); otherwise rank 0 measures alone

    def batch_sizes(self, cfg) -> list[int]:
        """The batch sizes it is measured at, from the BenchConfig."""
        return [1]

    def measure(self, run: Callable, batch_size: int, *, timing: dict, warmup: int, rate: float | None = None,
                bound_ms: float | None = None, seed: int = 0) -> Measurement:
        """One round. timing: {"min_queries", "min_duration"} (BenchConfig.timing)."""
        raise NotImplementedError
