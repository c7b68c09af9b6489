"""The SLURM launcher: the same steps as SLURM jobs, then watched until they end.

- the trainings to run are ONE job array (task i runs training i); every later step is one job that
  starts after the jobs it reads (`--dependency=afterok:...`, `--kill-on-invalid-dep=yes`);
- each job runs one recorded argv from a generated batch script, OUT/slurm/<step>-<jobid>.sbatch
  (plain bash, nothing pickled); its output goes to OUT/slurm/logs/<step>-<jobid>.out;
- a training job is requeueable and, when requeued (preempted), appends `--resume` to its argv, so it
  continues from RUN/checkpoints/last;
- `segvae run` polls squeue (sacct where accounting is on), prints each change and each stage's
  progress, and on a failed or cancelled job cancels its dependants and names the job and its log;
- re-run with the same arguments, it keeps jobs of the previous invocation that are still queued or
  running (same argv) and submits only the rest.

Every folder here (OUT, the data, this checkout and its Python) must be visible at the same path on
the compute nodes: a shared filesystem, as for `accelerate launch` across machines (harness/multinode.py).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from harness.errors import UserError
from harness.io import atomic_write_text, read_json
from harness.launchers.base import (CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, STOPPED, Launcher, LauncherConfig,
                                    Step, dependants)

SLURM_DIR = "slurm"
# squeue/sacct states of a job that may still run (a requeued job waits as PENDING)
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
         "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "POWER_UP_NODE"}


@dataclass
class SlurmConfig(LauncherConfig):
    """What every job asks SLURM for. From `segvae run` flags or a JSON file (--slurm-config) with these keys."""
    name: ClassVar[str] = "slurm"
    partition: str | None = None
    account: str | None = None
    time: str | None = None                 # per job, sbatch's format: "04:00:00", "1-00:00:00"
    gpus_per_task: int | None = None        # > 1: the training runs under `accelerate launch` on that many GPUs
    cpus_per_task: int | None = None
    sbatch_args: list[str] = field(default_factory=list)        # more sbatch options for every job
    bench_sbatch_args: list[str] = field(default_factory=lambda: ["--exclusive"])  # the bench owns its node
    poll_seconds: float = 10.0              # how often `segvae run` asks squeue

    @classmethod
    def from_file(cls, path) -> "SlurmConfig":
        doc = read_json(Path(path), "SLURM launcher config")
        known = {f.name for f in fields(cls)}
        if not isinstance(doc, dict) or set(doc) - known:
            extra = sorted(set(doc) - known) if isinstance(doc, dict) else "not an object"
            raise UserError(f"{path}: unexpected {extra}; expected a JSON object with keys from {sorted(known)}")
        return cls(**doc).validate(str(path))

    def updated(self, sbatch_args: list[str] | None = None, **flags) -> "SlurmConfig":
        """Flags given on the command line win over the file's values; --sbatch-arg adds to its list."""
        import dataclasses

        more = {"sbatch_args": self.sbatch_args + list(sbatch_args)} if sbatch_args else {}
        return dataclasses.replace(self, **flags, **more).validate("the command line")

    def validate(self, where: str) -> "SlurmConfig":
        for name in ("gpus_per_task", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"{where}: {name} must be a positive integer, got {value!r}")
        for name in ("sbatch_args", "bench_sbatch_args"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UserError(f"{where}: {name} must be a list of sbatch options (strings), got {value!r}")
        if not (isinstance(self.poll_seconds, (int, float)) and self.poll_seconds > 0):
            raise UserError(f"{where}: poll_seconds must be a positive number, got {self.poll_seconds!r}")
        return self

    def options(self, step: Step) -> list[str]:
        """The #SBATCH options of a step's job."""
        opts = [f"--{flag}={value}" for flag, value in (
            ("partition", self.partition), ("account", self.account), ("time", self.time),
            ("cpus-per-task", self.cpus_per_task),
            ("gpus-per-task", self.gpus_per_task if step.stage in ("train", "bench") else None)) if value]
        opts += self.sbatch_args
        if step.stage == "bench":
            opts += self.bench_sbatch_args
        return opts


def job_argv(step: Step, config: SlurmConfig) -> list[str]:
    """The argv the job runs: the step's, with a training under `accelerate launch` when it has several GPUs."""
    if step.stage == "train" and (config.gpus_per_task or 1) > 1:
        python, _, _, *rest = step.argv  # [python, -m, harness, train, ...]
        return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                "--num_processes", str(config.gpus_per_task), "--main_process_port", "0", "-m", "harness", *rest]
    return list(step.argv)


def batch_script(steps: list[Step], config: SlurmConfig, log: Path, workdir: Path) -> str:
    """A bash batch script running one recorded argv: steps[SLURM_ARRAY_TASK_ID] for an array, else steps[0]."""
    name = "segvae-train" if len(steps) > 1 or steps[0].stage == "train" else f"segvae-{steps[0].key.replace('/', '-')}"
    head = ["#!/bin/bash",
            "# written by `segvae run --launcher slurm`: one recorded stage command of OUT/pipeline.json",
            f"#SBATCH --job-name={name}", f"#SBATCH --output={log}", "#SBATCH --open-mode=append",
            f"#SBATCH --chdir={workdir}", "#SBATCH --ntasks=1"]
    is_train = steps[0].stage == "train"
    if is_train:
        head += [f"#SBATCH --array=0-{len(steps) - 1}", "#SBATCH --requeue"]
    head += [f"#SBATCH {opt}" for opt in config.options(steps[0])]
    body = ["set -euo pipefail", "export PYTHONUNBUFFERED=1"]
    if is_train:
        body.append('case "$SLURM_ARRAY_TASK_ID" in')
        body += [f"  {i}) argv=({shlex.join(job_argv(s, config))}) ;;  # {s.key}" for i, s in enumerate(steps)]
        body += ['  *) echo "no step for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
                 "# requeued (preempted): continue from the run's last epoch checkpoint",
                 'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [[ " ${argv[*]} " != *" --resume "* ]]; then',
                 "  argv+=(--resume)", "fi"]
    else:
        body.append(f"argv=({shlex.join(job_argv(steps[0], config))})  # {steps[0].key}")
    body += ['echo "[segvae] job ${SLURM_JOB_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}: ${argv[*]}"',
             'exec "${argv[@]}"']
    return "\n".join(head + [""] + body) + "\n"


def _slurm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(f"{args[0]} not found: --launcher slurm needs SLURM's client commands (sbatch, squeue, "
                        f"scancel) on PATH, on a machine that can submit jobs") from None
    if check and r.returncode != 0:
        raise UserError(f"`{shlex.join(args)}` failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (STATE, nodes)} for the ids squeue (or else sacct) still knows; unknown ids are left out."""
    found: dict[str, tuple[str, str]] = {}
    if not job_ids:
        return found

    def parse(text: str):
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 3 and parts[0] in job_ids:
                found[parts[0]] = (parts[1].split()[0] if parts[1] else "UNKNOWN", parts[2])

    roots = sorted({j.split("_")[0] for j in job_ids})
    r = _slurm("squeue", "-h", "-r", "--states=all", "-j", ",".join(roots), "-o", "%i|%T|%N", check=False)
    if r.returncode == 0:
        parse(r.stdout)
    else:  # one unknown id fails the whole call: ask one by one
        for root in roots:
            parse(_slurm("squeue", "-h", "-r", "--states=all", "-j", root, "-o", "%i|%T|%N", check=False).stdout)
    missing = [j for j in job_ids if j not in found]
    if missing and shutil.which("sacct"):  # jobs squeue has forgotten (MinJobAge), where accounting is on
        r = _slurm("sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State,NodeList", check=False)
        if r.returncode == 0:
            parse(r.stdout)
    return found


def _same_command(before, now) -> bool:
    """The same argv, but for --resume: a training submitted fresh and still running is re-planned with
    --resume (its run folder is unfinished), and is the same job all the same."""
    return isinstance(before, list) and [a for a in before if a != "--resume"] == [a for a in now if a != "--resume"]


class SlurmLauncher(Launcher):
    NAME = "slurm"
    config: SlurmConfig

    def launch(self, steps: list[Step]) -> None:
        for tool in ("sbatch", "squeue", "scancel"):
            if shutil.which(tool) is None:
                _slurm(tool)  # raises the clear error
        self.folder = (self.out / SLURM_DIR).absolute()
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        self.steps = steps
        self.job: dict[str, str] = {}   # step key -> job id of this plan (kept from before or submitted now)
        kept = self._keep_live_jobs(steps)
        self._submit([s for s in steps if s.key not in kept])
        self._watch()

    # ------------------------------------------------------------------ submit
    def _keep_live_jobs(self, steps: list[Step]) -> set[str]:
        """Jobs of a previous invocation with the same argv that are still queued, running or completed
        (and read only kept jobs): watched again instead of submitted twice. Stale ones are cancelled."""
        earlier = {s.key: self.previous.get(s.key) or {} for s in steps}  # of the steps to run now
        ids = [p["job_id"] for p in earlier.values() if p.get("job_id")]
        live = job_states(ids) if ids else {}
        kept: set[str] = set()
        for step in steps:
            prev = earlier[step.key]
            state, nodes = live.get(prev.get("job_id"), (None, ""))
            if state is None:
                continue
            usable = (state in ALIVE or state == "COMPLETED") and _same_command(prev.get("argv"), step.argv)
            inputs = [a for a in step.after if a in earlier]  # what it reads that runs now
            if usable and all(a in kept for a in inputs):
                kept.add(step.key)
                self.job[step.key] = prev["job_id"]
                info = {k: prev.get(k) for k in ("job_id", "script", "log", "argv")}  # the argv it runs
                self.set_state(step, PENDING if state in ALIVE else COMPLETED, nodes=nodes, **info)
                print(f"{step.tag} watching job {prev['job_id']} from the previous invocation ({state})", flush=True)
            elif state in ALIVE:
                _slurm("scancel", prev["job_id"], check=False)
                print(f"{step.tag} cancelled job {prev['job_id']} of the previous invocation (its inputs are "
                      f"submitted again)", flush=True)
        return kept

    def _submit(self, steps: list[Step]) -> None:
        trains = [s for s in steps if s.stage == "train"]
        if trains:
            array = self._sbatch(trains, "train", [])
            for i, step in enumerate(trains):
                self._submitted(step, f"{array['id']}_{i}", array, log_id=f"{array['id']}_{i}")
        for step in steps:
            if step.stage == "train":
                continue
            waits = [self.job[a] for a in step.after if a in self.job and self.states[a]["state"] != COMPLETED]
            job = self._sbatch([step], step.key.replace("/", "-"), waits)
            self._submitted(step, job["id"], job, log_id=job["id"])

    def _sbatch(self, steps: list[Step], name: str, waits: list[str]) -> dict:
        log_pattern = self.folder / "logs" / (f"{name}-%A_%a.out" if steps[0].stage == "train" else f"{name}-%j.out")
        draft = self.folder / f"{name}.sbatch.new"
        atomic_write_text(draft, batch_script(steps, self.config, log_pattern, Path.cwd().absolute()))
        args = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
        if waits:
            args.append("--dependency=afterok:" + ":".join(waits))
        job_id = _slurm(*args, str(draft)).stdout.strip().split(";")[0]
        script = self.folder / f"{name}-{job_id}.sbatch"
        os.replace(draft, script)
        return {"id": job_id, "script": script, "name": name}

    def _submitted(self, step: Step, job_id: str, job: dict, log_id: str) -> None:
        self.job[step.key] = job_id
        log = self.folder / "logs" / f"{job['name']}-{log_id}.out"
        self.set_state(step, PENDING, job_id=job_id, script=str(job["script"]), log=str(log), nodes="")
        print(f"{step.tag} submitted as job {job_id} (log {log})", flush=True)

    # ------------------------------------------------------------------ watch
    def _watch(self) -> None:
        t0 = time.perf_counter()
        first_run: dict[str, float] = {}
        ended: dict[str, str] = {}       # key -> slurm state of each step that ended badly
        while True:
            live = [s for s in self.steps if self.states[s.key]["state"] in (PENDING, RUNNING)]
            if not live:
                break
            seen = job_states([self.job[s.key] for s in live])
            changed = False
            for step in live:
                state, nodes = seen.get(self.job[step.key], ("GONE", ""))
                changed |= self._update(step, state, nodes, ended)
                if self.states[step.key]["state"] == RUNNING:
                    first_run.setdefault(step.stage, time.perf_counter())
            for stage in {s.stage for s in self.steps} - set(self.stage_seconds):
                mine = [self.states[s.key]["state"] for s in self.steps if s.stage == stage]
                if stage != "report" and all(st == COMPLETED for st in mine):
                    now = time.perf_counter()
                    self.stage_seconds[stage] = now - first_run.get(stage, t0)
                    print(f"[{stage}] done: {len(mine)} job(s) in {self.stage_seconds[stage] / 60:.1f} min "
                          f"({(now - t0) / 60:.1f} min so far)", flush=True)
            if ended:
                self._stop_dependants(ended)
            if changed:
                print("[slurm] " + self._progress(), flush=True)
                self.on_change()
            if any(self.states[s.key]["state"] in (PENDING, RUNNING) for s in self.steps):
                time.sleep(self.config.poll_seconds)
        if ended:
            raise UserError(self._failure_message(ended))

    def _update(self, step: Step, state: str, nodes: str, ended: dict) -> bool:
        old = self.states[step.key]
        if state in ALIVE:
            new = RUNNING if state in ("RUNNING", "COMPLETING", "CONFIGURING") else PENDING
            if new == old["state"] and (nodes or old.get("nodes")) == old.get("nodes"):
                return False
            self.states[step.key].update(state=new, nodes=nodes or old.get("nodes", ""), slurm_state=state)
            if new == RUNNING:
                print(f"{step.tag} job {self.job[step.key]} running on {nodes}", flush=True)
            return True
        if state == "GONE" and step.output.exists():
            state = "COMPLETED"  # SLURM forgot it; its output says it finished
        if state == "COMPLETED" and not step.output.exists():
            state = "COMPLETED_WITHOUT_OUTPUT"
        if state == "COMPLETED":
            self.states[step.key].update(state=COMPLETED, nodes=nodes or old.get("nodes", ""), slurm_state=state)
            print(f"{step.tag} job {self.job[step.key]} completed", flush=True)
            return True
        if any(self.states[a]["state"] in (FAILED, CANCELLED, STOPPED) for a in step.after if a in self.states):
            self.states[step.key].update(state=STOPPED, slurm_state=state)  # SLURM cancelled it for its input
            return True
        ended[step.key] = state
        self.states[step.key].update(state=CANCELLED if state.startswith("CANCELLED") else FAILED,
                                     nodes=nodes or old.get("nodes", ""), slurm_state=state)
        print(f"{step.tag} job {self.job[step.key]} ended {state}; its log: {old.get('log')}", flush=True)
        return True

    def _stop_dependants(self, ended: dict) -> None:
        for step in dependants(self.steps, set(ended)):
            if self.states[step.key]["state"] in (PENDING, RUNNING):
                _slurm("scancel", self.job[step.key], check=False)  # --kill-on-invalid-dep does it too
                self.states[step.key].update(state=STOPPED)
                self.on_change()

    def _progress(self) -> str:
        parts = []
        for stage in dict.fromkeys(s.stage for s in self.steps):
            states = [self.states[s.key]["state"] for s in self.steps if s.stage == stage]
            counts = {st: states.count(st) for st in dict.fromkeys(states) if st != COMPLETED}
            parts.append(f"{stage} {states.count(COMPLETED)}/{len(states)} done"
                         + "".join(f", {n} {st}" for st, n in counts.items()))
        return " | ".join(parts)

    def _failure_message(self, ended: dict) -> str:
        lines = []
        for key, state in ended.items():
            info = self.states[key]
            why = {"COMPLETED_WITHOUT_OUTPUT": "completed, but its output is not visible here (is OUT on a "
                                               "filesystem the compute nodes share?)",
                   "GONE": "is no longer known to SLURM and left no output"}.get(state, f"ended {state}")
            lines.append(f"job {info.get('job_id')} ({key}) {why}; its log: {info.get('log')}")
            log = Path(info.get("log") or "")
            if log.is_file():
                tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-8:]
                lines += ["  " + ln for ln in tail]
        stopped = [s.key for s in self.steps if self.states[s.key]["state"] == STOPPED]
        if stopped:
            lines.append(f"stopped its dependants: {', '.join(stopped)}")
        lines.append(f"re-run the same `segvae run` command to submit only what did not finish "
                     f"({self.out / 'pipeline.json'} records every job)")
        return "\n".join(lines)

