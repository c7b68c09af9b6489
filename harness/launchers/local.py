"""The local launcher (the default): every step as a child process on this machine, one after another.

A step's output streams to this terminal under its tag; the first failure stops the pipeline with
its output's tail (the steps after it never start).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import ClassVar

from harness.errors import UserError
from harness.launchers.base import COMPLETED, FAILED, RUNNING, Launcher, LauncherConfig, Step


@dataclass
class LocalConfig(LauncherConfig):
    name: ClassVar[str] = "local"


class LocalLauncher(Launcher):
    NAME = "local"

    def launch(self, steps: list[Step]) -> None:
        host = socket.gethostname()
        t0 = time.perf_counter()
        stage, t = None, t0
        for step in steps:
            if step.stage != stage:
                if stage is not None:
                    self._stage_done(stage, t, t0)
                stage, t = step.stage, time.perf_counter()
            self.set_state(step, RUNNING, nodes=host)
            started = time.perf_counter()
            try:
                run_child(step.argv, step.tag)
            except UserError:
                self.set_state(step, FAILED, seconds=time.perf_counter() - started)
                raise
            self.set_state(step, COMPLETED, seconds=time.perf_counter() - started)
        if stage is not None and stage != "report":
            self._stage_done(stage, t, t0)

    def _stage_done(self, stage: str, t: float, t0: float) -> None:
        seconds = time.perf_counter() - t
        self.stage_seconds[stage] = seconds
        print(f"[{stage}] done in {seconds / 60:.1f} min ({(time.perf_counter() - t0) / 60:.1f} min so far)",
              flush=True)
        self.on_change()


def run_child(argv: list[str], tag: str):
    """Run argv (a stage's full command), streaming its output; a failure stops the pipeline with its tail."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tail: list[str] = []
    for line in proc.stdout:
        for part in line.replace("\r", "\n").splitlines():
            if part.strip() and "it/s" not in part and "s/it" not in part:
                print(f"{tag} {part}", flush=True)
                tail = (tail + [part])[-20:]
    if proc.wait() != 0:
        raise UserError(f"{tag} failed (exit {proc.returncode}):\n" + "\n".join(tail))
