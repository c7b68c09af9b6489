"""How backends are launched and take turns.

- `ProcessWorker`: one persistent fresh Python process per backend (`python -m
  harness.bench.worker`), kept alive for the whole bench, so torch's and ORT's thread pools never
  share a process and an ORT worker never imports torch. Commands go as JSON lines on stdin.
- `LocalWorker`: the same commands in this process (isolate=False, and always when distributed).
- `Dist`: rank/world under `accelerate launch` (gather, broadcast, barrier).
- `interleave`: the scheduler. Round r of every backend runs before round r+1 of any, so a noisy
  minute on a shared machine hits every backend alike, and the speed-up of round r pairs two
  measurements taken moments apart. Within a round the backends go in a seeded random order, new
  every round, so that going first (a cold cache, the previous backend's threads still spinning)
  is no backend's constant handicap; the orders are returned to be recorded.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

from harness.bench.process_env import omp_env
from harness.bench.worker import Worker


class WorkerError(RuntimeError):
    pass


class ProcessWorker:
    def __init__(self, name: str, settings: dict):
        self.name = name
        repo = str(Path(importlib.util.find_spec("harness").origin).parent.parent)  # the folder holding harness/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.update(omp_env(settings.get("wait", "spin")))
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.bench.worker", json.dumps({**settings, "name": name})],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def call(self, op: str, **kw):
        self.send(op, **kw)
        return self.receive()

    def send(self, op: str, **kw) -> None:
        """The command alone: several workers can then work at once (untimed work only)."""
        try:
            self.proc.stdin.write(json.dumps([op, kw]) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # receive() reports the dead worker

    def receive(self):
        try:
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            raise WorkerError(f"worker process for {self.name} died (exit code {self.proc.poll()})")
        status, *payload = json.loads(line)
        if status != "ok":
            raise WorkerError(payload[0] + (f"\n{payload[1]}" if len(payload) > 1 and payload[1] else ""))
        return payload[0]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps(["exit", {}]) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class LocalWorker:
    def __init__(self, name: str, settings: dict, dist=None):
        self.name = name
        rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
        self.worker = Worker(name, settings, rank, world, dist if dist is not None and dist.world > 1 else None)

    def call(self, op: str, **kw):
        try:
            return self.worker.handle(op, kw)
        except Exception as e:
            if os.environ.get("SEGVAE_BENCH_DEBUG"):
                import traceback
                traceback.print_exc()
            raise WorkerError(f"{type(e).__name__}: {e}") from e

    def close(self):
        self.worker._close()


def interleave(names: Callable[[], Iterable[str]], rounds: int, items: Iterable, call: Callable,
               on_round: Callable[[int], None] | None = None, rng: random.Random | None = None,
               extend: Callable[[int], int] | None = None, slices: int = 1) -> list[dict]:
    """for r in rounds: for each item (scenario, batch size): for each backend names() gives (asked
    afresh, so one whose call failed is dropped for the rest), in an order shuffled per (round,
    item) by `rng` (None: names()'s order): call(name, item, r, s) for each slice s of the round,
    the order reversed every other slice (ABBA: a drift within the round hits every backend alike;
    slices > 1 alternate the backends many times per round, so the host's sub-second swings land on
    all of them); then on_round(r + 1). extend(r), asked after every round r, returns how many
    rounds to run in all: more (the A/B mode sizes its session from the spread its first rounds show)
    or fewer (a bench fitting its time budget). Returns the orders actually run:
    [{"scenario|bs": [name, ...]}, ...], one dict per round."""
    items = list(items)
    schedule = []
    target, r = rounds, 0
    while r < target:
        orders = {}
        for item in items:
            order = list(names())
            if rng is not None:
                rng.shuffle(order)
            ran = orders[f"{item[0]}|{item[1]}"] = []
            for sl in range(slices):
                for name in (order if sl % 2 == 0 else order[::-1]):
                    if name in names():  # not dropped by an earlier call of this round
                        if sl == 0:
                            ran.append(name)
                        call(name, item, r, sl)
        schedule.append(orders)
        r += 1
        if extend is not None:
            target = extend(r)
        if on_round is not None:
            on_round(r)
    return schedule


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
