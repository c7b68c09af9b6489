"""`segvae run`: data -> train -> judge -> export -> bench -> report, driven by a named preset.

Every stage is a `segvae` command run as a child process (`python -m harness STAGE ...`): the
pipeline builds each stage's argv once, checks it against the parser before any work starts, runs
it, and records that very argv in pipeline.json, so the report's "Reproduce" commands are what
ran. Each training run gets a fresh Accelerator and its own threads. Where the commands run is the
launcher's business (harness/launchers/): child processes here, one after another (`local`, the
default), or SLURM jobs (`slurm`: the trainings as one job array, each later stage after the jobs it
reads). Outputs:

    OUT/<experiment>[-s<seed>]/   one run directory per experiment and seed (harness.run_folder)
    OUT/configs/<run>.json        the resolved config each training started from
    OUT/judges/<dataset>/         the label-swap judges
    OUT/bench.json                PyTorch vs ONNX Runtime, speed and accuracy
    OUT/report.html, report.md    the report
    OUT/pipeline.json             preset, commands (as run), each step's state (and job), wall time
    OUT/slurm/                    the SLURM launcher's batch scripts and job logs

Re-running with the same OUT reuses each finished run whose config is unchanged (and each judge
with unchanged settings), resumes an interrupted run from its last epoch checkpoint, and skips a
judge, export or bench step that pipeline.json records as finished with the same command when
nothing it reads ran again (the report is always rebuilt); `--retrain` trains everything again.
"""
from __future__ import annotations

import contextlib
import io
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.cli_parser import build_parser
from harness.config import EXPERIMENTS, ExperimentConfig, get_experiment
from harness.data import resolve_data_root
from harness.errors import UserError
from harness.estimate import estimate
from harness.hardware import machine
from harness.io import atomic_write_json, read_json
from harness.launchers.base import FINISHED, PLANNED, REUSED, LauncherConfig, Step
from harness.presets import PRESETS, Preset, preset_config, task_seeds
from harness.run_folder import (BENCH_FILE, CONFIG_FILE, CONFIGS_DIR, DEFAULT_OUT, JUDGES_DIR, LABELSWAP_FILE,
                                FIT_FILE, METRICS_FILE, PEAK_FILE, PIPELINE_FILE, REPORT_HTML, REPORT_MD, WEIGHTS_FILE, judge_dir,
                                load_config, run_dir_name)


# ---------------------------------------------------------------------------- argv of each stage
def harness_argv(*args) -> list[str]:
    """The argv of one stage as it runs: this interpreter, `-m harness`, the subcommand's args."""
    return [sys.executable, "-m", "harness", *map(str, args)]


def as_flags(settings: dict) -> list[str]:
    """{"batch_sizes": [1, 8], "warmup": 2, "x": None} -> ["--batch-sizes", "1,8", "--warmup", "2"]:
    one flag per key (underscores as dashes), lists comma-joined, True as a bare flag, None and
    False left out. Generic, so a new BenchConfig field in a preset needs no code here."""
    out: list[str] = []
    for key, value in settings.items():
        if value is None or value is False:
            continue
        out.append("--" + key.replace("_", "-"))
        if value is not True:
            out.append(",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    return out


def _root(root: Path | None) -> list[str]:
    """--data-root ROOT, or nothing for the embedded sample (every stage's default)."""
    return ["--data-root", str(root)] if root is not None else []


def train_argv(name: str, cfg_path: Path, root: Path | None, run: Path, log_with: str) -> list[str]:
    return harness_argv("train", name, "--config", cfg_path, *_root(root), "--out", run, "--log-with", log_with)


def judge_argv(dataset: str, root: Path | None, out: Path, epochs: int | None, runs: list[Path],
               retrain: bool) -> list[str]:
    return harness_argv("judge", dataset, *_root(root), "--out", out,
                        *(["--epochs", epochs] if epochs else []), *(["--runs", *runs] if runs else []),
                        *(["--retrain"] if retrain else []))


def export_argv(run: Path, root: Path | None, export: dict) -> list[str]:
    return harness_argv("export", run, *_root(root), *as_flags(export))


def bench_argv(runs: list[Path], root: Path | None, out: Path, bench: dict, judges: Path | None) -> list[str]:
    return harness_argv("bench", *runs, *_root(root), "--out", out, *as_flags(bench),
                        *(["--judges", judges] if judges else []))


def report_argv(out: Path) -> list[str]:
    return harness_argv("report", out)


def check_argv(argv: list[str]) -> None:
    """Parse a stage's argv with the real parser before any work starts: a preset key without a
    flag fails now, naming it, not after an hour of training."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv[3:])
    except SystemExit:
        raise UserError(f"pipeline stage `{shlex.join(argv[3:])}` does not parse: "
                        f"{err.getvalue().strip().splitlines()[-1]}") from None


# ---------------------------------------------------------------------------- the pipeline
@dataclass
class Plan:
    """Everything a `segvae run` does, decided before anything runs."""
    preset: str
    p: Preset
    root: Path | None        # None: the embedded sample
    out: Path
    experiments: list[str]
    seeds: dict[str, list[int]]
    unet_epochs: int | None = None  # fewer than the preset's, to fit its minutes_budget on this machine
    runs: list[tuple[ExperimentConfig, Path, list[str]]] = field(default_factory=list)  # cfg, run, argv
    primary: list[Path] = field(default_factory=list)      # the first seed's run of each experiment
    judges: list[list[str]] = field(default_factory=list)
    exports: list[list[str]] = field(default_factory=list)
    bench: list[str] = field(default_factory=list)
    report: list[str] = field(default_factory=list)
    bench_settings: dict = field(default_factory=dict)     # the preset's bench settings fit to this machine
    left_out: dict = field(default_factory=dict)           # backend -> why the preset's bench leaves it out here
    steps: list[Step] = field(default_factory=list)       # every command above, with what it reads

    def all_argv(self) -> list[list[str]]:
        return [a for _, _, a in self.runs] + self.judges + self.exports + [self.bench, self.report]


def make_plan(preset: str, data_root, experiments, seeds, out_dir, log_with: str, retrain: bool,
              unet_epochs: int | None = None) -> Plan:
    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}: expected one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    experiments = list(experiments or EXPERIMENTS)
    for name in experiments:
        get_experiment(name)  # clear error for an unknown name before any work starts
    override = tuple(seeds) if seeds else None
    root = resolve_data_root(data_root).absolute() if data_root is not None else None
    plan = Plan(preset, p, root, Path(out_dir), experiments,
                {task: list(task_seeds(p, task, override)) for task in ("segmentation", "cvae")}, unet_epochs=unet_epochs)
    for name in experiments:
        own = tuple(plan.seeds[get_experiment(name).task])
        for seed in own:
            cfg = preset_config(name, p, seed)
            if unet_epochs and cfg.task == "segmentation":
                cfg = cfg.replace(epochs=unet_epochs)
            run = plan.out / run_dir_name(name, seed, own)
            cfg_path = plan.out / CONFIGS_DIR / f"{run.name}.json"
            plan.runs.append((cfg, run, train_argv(name, cfg_path, plan.root, run, log_with)))
            if seed == own[0]:
                plan.primary.append(run)
    datasets = {}
    for cfg, run, _ in plan.runs:
        if cfg.task == "cvae" and run in plan.primary:
            datasets.setdefault(cfg.dataset, []).append(run)
    plan.judges = [judge_argv(ds, plan.root, judge_dir(ds, plan.out), p.judge_epochs.get(ds), runs, retrain)
                   for ds, runs in datasets.items()]
    plan.exports = [export_argv(run, plan.root, p.export) for run in plan.primary]
    plan.bench_settings, plan.left_out = bench_for_machine(p.bench, machine(with_gpu=False))
    plan.bench = bench_argv(plan.primary, plan.root, plan.out / BENCH_FILE,
                            {**plan.bench_settings, "peak_file": plan.out / PEAK_FILE},
                            plan.out / JUDGES_DIR if datasets else None)
    plan.report = report_argv(plan.out)
    for argv in plan.all_argv():
        check_argv(argv)
    plan.steps = plan_steps(plan, datasets)
    return plan


def bench_for_machine(bench: dict, host) -> tuple[dict, dict]:
    """The preset's bench settings with the backends this machine only emulates left out (their
    precision 60-500x slower than fp32 here): (settings, {backend: why})."""
    from harness.bench.runner import default_backends

    if bench.get("backends") is None:
        return dict(bench), {}  # the bench's own default leaves them out and says so
    keep, left_out = default_backends(host, "cpu", list(bench["backends"]))
    return {**bench, "backends": keep}, left_out


def plan_steps(plan: Plan, judged: dict[str, list[Path]]) -> list[Step]:
    """The plan as steps in run order, each naming the steps whose outputs it reads: what a launcher
    needs to order them (SLURM: afterok dependencies) and to tell what a failure stops."""
    from harness.run_folder import EXPORT_FILE, JUDGE_FILE, ONNX_DIR

    train = {run: f"train/{run.name}" for _, run, _ in plan.runs}
    steps = [Step(train[run], "train", argv, [], run / METRICS_FILE) for _, run, argv in plan.runs]
    judges = []
    for (ds, runs), argv in zip(judged.items(), plan.judges):
        judges.append(Step(f"judge/{ds}", "judges", argv, [train[r] for r in runs],
                           judge_dir(ds, plan.out) / JUDGE_FILE))
    exports = [Step(f"export/{run.name}", "export", argv, [train[run]], run / ONNX_DIR / EXPORT_FILE)
               for run, argv in zip(plan.primary, plan.exports)]
    bench = Step("bench", "bench", plan.bench, [s.key for s in judges + exports], plan.out / BENCH_FILE)
    steps += judges + exports + [bench]
    steps.append(Step("report", "report", plan.report, [s.key for s in steps], plan.out / REPORT_HTML))
    return steps


def _steps_to_run(plan: Plan, previous: dict[str, dict], retrain: bool) -> tuple[list[Step], list[str]]:
    """(the steps to run, the names of reused runs). A training is reused when its run folder holds a
    finished run of the same config (the run folder is the contract), resumed (`--resume`) when it holds
    an unfinished one; a later step when pipeline.json records it finished with the same argv, its
    output is there and nothing it reads runs again. The report always runs."""
    todo: list[Step] = []
    reused: list[str] = []
    trainings = {f"train/{run.name}": (cfg, run) for cfg, run, _ in plan.runs}
    for step in plan.steps:
        if step.stage == "train":
            cfg, run = trainings[step.key]
            atomic_write_json(Path(step.argv[step.argv.index("--config") + 1]), cfg.to_dict())
            state = run_state(run, cfg)
            if state == "finished" and not retrain:
                print(f"[train {run.name}] reusing the finished run in {run} (same config; --retrain to redo it)",
                      flush=True)
                reused.append(run.name)
                continue
            if retrain or state == "other":
                _forget_result(run)
            if state == "same" and not retrain:
                step.argv = step.argv + ["--resume"]
            todo.append(step)
            continue
        prev = previous.get(step.key) or {}
        done = (not retrain and step.stage != "report" and prev.get("state") in FINISHED
                and prev.get("argv") == step.argv and step.output.exists()
                and not any(t.key in step.after for t in todo))
        if done:
            print(f"{step.tag} reusing its finished output {step.output} (same command; nothing it reads ran again)",
                  flush=True)
        else:
            todo.append(step)
    return todo, reused


def _previous_steps(out: Path) -> dict[str, dict]:
    """The step records of the previous `segvae run` into this OUT (empty when none or unreadable)."""
    try:
        doc = read_json(out / PIPELINE_FILE, "pipeline record")
    except UserError:
        return {}
    steps = doc.get("steps") if isinstance(doc, dict) else None
    return steps if isinstance(steps, dict) else {}


def run_pipeline(preset: str = "quick", data_root=None, experiments=None, seeds=None, out_dir=DEFAULT_OUT,
                 log_with: str = "none", retrain: bool = False, dry_run: bool = False,
                 full_epochs: bool = False, launcher: LauncherConfig | None = None) -> dict:
    """Plan, then hand the steps that did not finish to the launcher (default: local child processes)."""
    import dataclasses

    from harness.launchers import launcher_classes
    from harness.launchers.local import LocalConfig

    launcher = launcher or LocalConfig()
    plan = make_plan(preset, data_root, experiments, seeds, out_dir, log_with, retrain)
    if not dry_run:
        plan.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"segvae run: preset {preset!r} ({plan.p.description})\n  data {plan.root or 'the embedded sample'}"
          f"\n  experiments "
          f"{plan.experiments}, seeds {plan.seeds}\n  outputs under {plan.out.resolve()}\n  launcher {launcher.name}",
          flush=True)
    for name, why in plan.left_out.items():
        print(f"  bench: leaving out {name}: {why}; to bench it anyway: segvae bench RUN... --backends "
              f"{','.join([*plan.bench_settings.get('backends', []), name])}", flush=True)
    costs: dict = {}
    est = estimate_plan(plan, retrain, costs)
    # the budget is this machine's: with --launcher slurm the jobs train the preset's epochs on the cluster's nodes
    fit_here = launcher.name == "local" and not full_epochs
    fitted = fitted_before(plan.out, preset) if fit_here else None
    if fitted is None and fit_here and not any(run.exists() for _, run, _ in plan.runs):
        fitted = fit_unet_epochs(plan, est)  # only for a fresh --out: a re-run keeps what the first run chose
    if not dry_run:
        atomic_write_json(plan.out / FIT_FILE, {"preset": preset, "unet_epochs": fitted})
    if fitted:
        full = est
        plan = make_plan(preset, data_root, experiments, seeds, out_dir, log_with, retrain, unet_epochs=fitted)
        est = estimate_plan(plan, retrain, costs)
        print(f"  fitting the {preset!r} preset's {plan.p.minutes_budget:.0f}-minute budget on this machine: the UNets "
              f"train {fitted} epochs instead of {_preset_unet_epochs(plan)} (estimate at the preset's epochs: "
              f"{full.total_s / 60:.0f} min; --full-epochs keeps them)", flush=True)
    print(est.line(), flush=True)
    if dry_run:
        print("dry run: the stages would run these commands:\n" + "\n".join(f"  {shlex.join(map(str, a[3:]))}"
                                                                           for a in plan.all_argv()), flush=True)
        return {"out": plan.out, "estimate": est, "plan": plan}
    previous = _previous_steps(plan.out)
    todo, reused = _steps_to_run(plan, previous, retrain)
    states = {s.key: {"stage": s.stage, "argv": s.argv, "after": s.after, "state": PLANNED} for s in plan.steps}
    for step in plan.steps:
        if step not in todo:
            prev = previous.get(step.key) or {}
            states[step.key].update({k: prev[k] for k in ("job_id", "nodes", "script", "log") if k in prev},
                                    state=REUSED)
    run_argv = ["segvae", *sys.argv[1:]] if sys.argv else []
    runner = launcher_classes(launcher.name)[0](launcher, plan.out, states, lambda: None, previous)
    host = machine().as_dict()  # where `segvae run` ran (with --launcher slurm: not where the jobs ran)

    def record():
        atomic_write_json(plan.out / PIPELINE_FILE, {
            "preset": preset, "description": plan.p.description,
            "data_root": str(plan.root) if plan.root else "embedded",
            "experiments": plan.experiments, "seeds": plan.seeds, "reused_runs": reused,
            "launcher": {"name": launcher.name, **dataclasses.asdict(launcher)},
            "commands": ([shlex.join(run_argv)] if run_argv else []) + [shlex.join(s.argv) for s in plan.steps],
            "argv": ([run_argv] if run_argv else []) + [s.argv for s in plan.steps],
            "wall_seconds": time.perf_counter() - t0, "stage_seconds": runner.stage_seconds,
            "estimate": {"stage_seconds": est.stages, "calibration_seconds": est.calibration_s},
            "bench_left_out": plan.left_out, "unet_epochs_fitted": plan.unet_epochs, "machine": host,
            "steps": states})

    runner.on_change = record
    record()
    try:
        runner.launch(todo)
    finally:
        record()
    wall = time.perf_counter() - t0
    html = (plan.out / REPORT_HTML).resolve()
    print(f"segvae run finished in {wall / 60:.1f} min; report: {html}", flush=True)
    return {"out": plan.out, "wall_seconds": wall, "html": html, "md": (plan.out / REPORT_MD).resolve()}


MIN_FIT_EPOCHS = 8


def fitted_before(out: Path, preset: str) -> int | None:
    """The UNet epochs an earlier `segvae run` of this preset into `out` fitted to this machine (None:
    it kept the preset's), so that re-running resumes and reuses its runs instead of refitting."""
    from harness.io import read_json

    path = out / FIT_FILE
    doc = read_json(path, "segvae run's fit") if path.is_file() else None
    return doc.get("unet_epochs") if isinstance(doc, dict) and doc.get("preset") == preset else None


def _preset_unet_epochs(plan: Plan) -> int:
    return int(plan.p.segmentation.get("epochs") or get_experiment("unet-mp-tr-bce").epochs)


def fit_unet_epochs(plan: Plan, est) -> int | None:
    """UNet epochs that bring the estimate within the preset's minutes_budget (at least MIN_FIT_EPOCHS),
    or None when it fits already (or the preset has no budget, or trains no UNet)."""
    budget = plan.p.minutes_budget
    unet_s = est.per_task.get("segmentation", 0.0)
    if not budget or unet_s <= 0 or est.total_s <= budget * 60:
        return None
    epochs = _preset_unet_epochs(plan)
    room = budget * 60 - (est.total_s - unet_s)
    fitted = max(MIN_FIT_EPOCHS, math.floor(epochs * room / unet_s))
    return fitted if fitted < epochs else None


def estimate_plan(plan: Plan, retrain: bool, costs: dict | None = None):
    """harness.estimate on what this plan will really do: runs not yet finished, judges not current."""
    from harness.judge import judge_is_current, judge_settings

    runs = [(cfg, run in plan.primary, retrain or run_state(run, cfg) != "finished") for cfg, run, _ in plan.runs]
    judges = []
    for argv in plan.judges:
        ds = argv[argv.index("judge") + 1]
        epochs = plan.p.judge_epochs.get(ds)
        if retrain or not judge_is_current(judge_dir(ds, plan.out), judge_settings(ds, plan.root, epochs)):
            judges.append((ds, epochs))
    return estimate(runs, judges, plan.root, plan.p.export, plan.bench_settings, costs)


def run_state(run: Path, cfg: ExperimentConfig) -> str:
    """What OUT/<run> holds for this config: 'finished' (metrics written), 'same' (the same config,
    unfinished: resume it), 'other' (another config, or nothing readable) or 'none'.

    Why: re-running `segvae run` after a crash, a Ctrl-C or a report fix must not redo hours of
    finished training. Configs are compared through ExperimentConfig, so a config.json written
    before a field with a default was added still matches.
    """
    if not (run / CONFIG_FILE).is_file():
        return "none"
    try:
        if load_config(run) != cfg:
            return "other"
    except UserError:
        return "other"
    return "finished" if (run / METRICS_FILE).is_file() and (run / WEIGHTS_FILE).is_file() else "same"


def _forget_result(run: Path):
    """A run directory about to be retrained with another config loses its old results first (its
    metrics and label-swap scores), so a crash part-way can never pair the new config with them."""
    for name in (METRICS_FILE, LABELSWAP_FILE):
        (run / name).unlink(missing_ok=True)


