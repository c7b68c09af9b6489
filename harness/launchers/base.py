"""What a launcher is: the interface `segvae run` hands its planned stage commands to.

The pipeline (harness/pipeline.py) decides WHAT runs: every stage's argv, what each reads, which
steps a previous invocation already finished. A launcher decides WHERE and HOW: one after another
as child processes here (local.py) or as SLURM jobs (slurm.py). Both record each step's state in
the same `states` dict, which the pipeline writes to OUT/pipeline.json on every change.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

# the states a step goes through, as pipeline.json records them
PLANNED, PENDING, RUNNING, COMPLETED, REUSED = "planned", "pending", "running", "completed", "reused"
FAILED, CANCELLED, STOPPED = "failed", "cancelled", "stopped"  # stopped: a dependency failed, it never ran
FINISHED = (COMPLETED, REUSED)


@dataclass
class Step:
    """One stage command of the plan."""
    key: str                 # unique and readable: "train/unet-mp-tr-bce", "judge/mnist", "bench", "report"
    stage: str               # train, judges, export, bench, report (pipeline.json stage_seconds keys)
    argv: list[str]          # the full command, as it runs
    after: list[str]         # keys of the steps whose outputs it reads
    output: Path             # the file that exists once it finished

    @property
    def tag(self) -> str:
        """What its log lines start with: "[train unet-mp-tr-bce]"."""
        return f"[{self.key.replace('/', ' ')}]"


@dataclass
class LauncherConfig:
    """Settings shared by every launcher; each launcher extends it with its own."""
    name: ClassVar[str] = "base"


class Launcher:
    """Runs steps and reports their states; raises UserError when one fails (after stopping its dependants)."""
    NAME: ClassVar[str] = "base"

    def __init__(self, config: LauncherConfig, out: Path, states: dict[str, dict], on_change: Callable[[], None],
                 previous: dict[str, dict] | None = None):
        self.config = config
        self.previous = previous or {}  # key -> the step's record in the previous invocation's pipeline.json
        self.out = out
        self.states = states          # key -> {"stage", "state", ...}: the pipeline's record of every step
        self.on_change = on_change    # write pipeline.json (atomically) after a state change
        self.stage_seconds: dict[str, float] = {}

    def launch(self, steps: list[Step]) -> None:
        """Run `steps` (in plan order, each after the steps it lists in `after` that are among them)."""
        raise NotImplementedError

    def set_state(self, step: Step, state: str, **info) -> None:
        self.states[step.key].update(state=state, **info)
        self.on_change()


def dependants(steps: list[Step], failed: set[str]) -> list[Step]:
    """Every step that reads, directly or through others, a step in `failed`: what a failure stops."""
    lost = set(failed)
    out = []
    for step in steps:  # plan order: a step comes after everything it reads
        if step.key not in lost and lost.intersection(step.after):
            lost.add(step.key)
            out.append(step)
    return out

