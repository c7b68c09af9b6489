"""`segvae run`: data -> train -> judge -> export -> bench -> report, driven by a named preset.

Every stage is a `segvae` command run as a child process (`python -m harness STAGE ...`): the
pipeline builds each stage's argv once, checks it against the parser before any work starts, runs
it, and records that very argv in pipeline.json, so the report's "Reproduce" commands are what
ran. Each training run gets a fresh Accelerator and its own threads. Outputs:

    OUT/<experiment>[-s<seed>]/   one run directory per experiment and seed (harness.run_folder)
    OUT/configs/<run>.json        the resolved config each training started from
    OUT/judges/<dataset>/         the label-swap judges
    OUT/bench.json                PyTorch vs ONNX Runtime, speed and accuracy
    OUT/report.html, report.md    the report
    OUT/pipeline.json             preset, commands (as run), wall time

Re-running with the same OUT reuses each finished run whose config is unchanged (and each judge
with unchanged settings) and resumes an interrupted run from its last epoch checkpoint; `--retrain`
trains everything again.
"""
from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import EXPERIMENTS, ExperimentConfig, get_experiment
from harness.errors import UserError
from harness.estimate import estimate
from harness.hardware import machine
from harness.io import atomic_write_json

PIPELINE_FILE = "pipeline.json"
PEAK_FILE = "peak.json"
FIT_FILE = "fit.json"
BENCH_FILE = "bench.json"
JUDGES_DIR = "judges"
CONFIGS_DIR = "configs"


@dataclass
class Preset:
    """Overrides applied to the registry's configs, plus what the later stages do."""
    description: str
    segmentation: dict = field(default_factory=dict)   # ExperimentConfig fields for UNets
    cvae: dict = field(default_factory=dict)           # ExperimentConfig fields for CVAEs
    cvae_by_dataset: dict = field(default_factory=dict)  # dataset -> more CVAE fields ("model": model settings)
    unet_channels: int | None = None
    cvae_channels: int | None = None
    seeds: tuple[int, ...] = (0,)
    cvae_seeds: tuple[int, ...] | None = None           # None: the same as seeds (--seeds sets both)
    judge_epochs: dict = field(default_factory=dict)    # dataset -> epochs; absent: the judge recipe's
    export: dict = field(default_factory=lambda: {"quantize": "int8"})  # `segvae export` flags
    bench: dict = field(default_factory=dict)           # `segvae bench` flags (BenchConfig fields)
    minutes_budget: float | None = None                 # fit a slower machine by training the UNets fewer epochs


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "A quick CPU look (README's first command): the embedded sample, small widths, short runs.",
        segmentation={"epochs": 25, "image_size": 128, "batch_size": 8, "lr": 3e-3},
        cvae={"epochs": 20, "batch_size": 64, "early_stop_patience": None},
        # MNIST on 1,000 digits collapsed at batch 64 / KL weight 8 (the decoder drew class templates, retention
        # 0.00); batch 16 (more steps), KL weight 6, 0.5 free nats per latent dim and a narrower initial
        # likelihood scale escape the template plateau: swap 86.6-91.6% over seeds 0-3, retention 0.53-0.58.
        cvae_by_dataset={"mnist": {"epochs": 30, "batch_size": 16, "kl_weight": 6.0, "lr": 2e-3, "free_bits": 0.5,
                                   "model": {"log_scale_init": -2.0}}},
        unet_channels=16, cvae_channels=32,
        # the fp32 MNIST judge read 94.7% of real digits after 10 epochs (unfit); 20 epochs: 95.7-97.2% over
        # seeds 0-1 in fp32 and bf16. A CIFAR-10 judge cannot be fit on 850 images; 10 epochs keep it cheap.
        judge_epochs={"mnist": 20, "cifar10": 10},
        bench={"batch_sizes": [1, 8], "rounds": 3, "min_queries": 10, "min_duration": 0.3, "warmup": 2,
               "accuracy_samples": 200, "backends": ["torch-eager", "torch-bf16", "ort-fp32", "ort-int8"]},
        # README's first command must stay a quick look on any CPU: where the estimate exceeds this, the
        # UNets train fewer epochs (the CVAEs keep theirs: fewer let the MNIST CVAE collapse to templates)
        minutes_budget=11.0,
    ),
    "cpu": Preset(
        "A thorough CPU run on ../shared/data (a 3-breed Oxford-IIIT Pet subset, 8,000 + 8,000 MNIST and "
        "CIFAR-10 images): the registry's recipes, bf16 UNets over 3 seeds, one seed per CVAE.",
        segmentation={"mixed_precision": "bf16"},
        cvae={"early_stop_patience": None},
        judge_epochs={"mnist": 12}, seeds=(0, 1, 2), cvae_seeds=(0,),  # CIFAR-10: the recipe's 30 (fit)
        bench={},  # the bench's defaults: 12 interleaved rounds, single-stream and offline batch 8
    ),
    "gpu": Preset(
        "A GPU run with the seed's settings: 64 base channels, 256 px, more epochs, bf16.",
        segmentation={"image_size": 256, "epochs": 100, "batch_size": 32, "mixed_precision": "bf16"},
        cvae={"epochs": 100, "batch_size": 256, "mixed_precision": "bf16"},
        unet_channels=64, cvae_channels=128, seeds=(0, 1, 2),
        export={"quantize": "int8", "fp16": True},
        bench={"batch_sizes": [1, 8, 32, 128], "min_queries": 100, "min_duration": 5.0},
    ),
}


def preset_config(name: str, preset: Preset, seed: int) -> ExperimentConfig:
    """The registry's recipe with the preset's overrides and the seed: what the run trains."""
    cfg = get_experiment(name)
    cfg = apply_overrides(cfg, preset.segmentation if cfg.task == "segmentation" else preset.cvae).replace(seed=seed)
    if cfg.task == "cvae":
        cfg = apply_overrides(cfg, preset.cvae_by_dataset.get(cfg.dataset, {}))
    channels = preset.unet_channels if cfg.task == "segmentation" else preset.cvae_channels
    if channels:
        cfg = cfg.with_base_channels(channels)
    return cfg.validate()


def apply_overrides(cfg: ExperimentConfig, overrides: dict) -> ExperimentConfig:
    """Config fields, plus "model": {...} for the model settings (e.g. log_scale_init)."""
    import dataclasses

    overrides = dict(overrides)
    model = overrides.pop("model", None)
    cfg = cfg.replace(**overrides)
    return cfg.replace(model=dataclasses.replace(cfg.model, **model)) if model else cfg


def task_seeds(preset: Preset, task: str, override: tuple[int, ...] | None) -> tuple[int, ...]:
    if override:
        return tuple(override)
    return tuple(preset.cvae_seeds or preset.seeds) if task == "cvae" else tuple(preset.seeds)


def run_dir_name(name: str, seed: int, seeds: tuple[int, ...]) -> str:
    return name if len(seeds) == 1 else f"{name}-s{seed}"


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
    import contextlib
    import io

    from harness.cli import build_parser

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

    def all_argv(self) -> list[list[str]]:
        return [a for _, _, a in self.runs] + self.judges + self.exports + [self.bench, self.report]


def make_plan(preset: str, data_root, experiments, seeds, out_dir, log_with: str, retrain: bool,
              unet_epochs: int | None = None) -> Plan:
    from harness.data import resolve_data_root

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
    plan.judges = [judge_argv(ds, plan.root, plan.out / JUDGES_DIR / ds, p.judge_epochs.get(ds), runs, retrain)
                   for ds, runs in datasets.items()]
    plan.exports = [export_argv(run, plan.root, p.export) for run in plan.primary]
    plan.bench_settings, plan.left_out = bench_for_machine(p.bench, machine(with_gpu=False))
    plan.bench = bench_argv(plan.primary, plan.root, plan.out / BENCH_FILE,
                            {**plan.bench_settings, "peak_file": plan.out / PEAK_FILE},
                            plan.out / JUDGES_DIR if datasets else None)
    plan.report = report_argv(plan.out)
    for argv in plan.all_argv():
        check_argv(argv)
    return plan


def bench_for_machine(bench: dict, host) -> tuple[dict, dict]:
    """The preset's bench settings with the backends this machine only emulates left out (their
    precision 60-500x slower than fp32 here): (settings, {backend: why})."""
    from harness.bench.runner import default_backends

    if bench.get("backends") is None:
        return dict(bench), {}  # the bench's own default leaves them out and says so
    keep, left_out = default_backends(host, "cpu", list(bench["backends"]))
    return {**bench, "backends": keep}, left_out


def _train_stage(plan: Plan, retrain: bool, ran: list[list[str]], reused: list[str]) -> None:
    for cfg, run, argv in plan.runs:
        atomic_write_json(Path(argv[argv.index("--config") + 1]), cfg.to_dict())
        state = run_state(run, cfg)
        if state == "finished" and not retrain:
            print(f"[train {run.name}] reusing the finished run in {run} (same config; --retrain to redo it)",
                  flush=True)
            reused.append(run.name)
            ran.append(argv)  # the command that made the run
            continue
        if retrain or state == "other":
            _forget_result(run)
        resume = ["--resume"] if state == "same" and not retrain else []
        ran.append(argv + resume)
        _child(argv + resume, f"[train {run.name}]")


def run_pipeline(preset: str = "quick", data_root=None, experiments=None, seeds=None, out_dir="runs",
                 log_with: str = "none", retrain: bool = False, dry_run: bool = False,
                 full_epochs: bool = False) -> dict:
    plan = make_plan(preset, data_root, experiments, seeds, out_dir, log_with, retrain)
    if not dry_run:
        plan.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"segvae run: preset {preset!r} ({plan.p.description})\n  data {plan.root or 'the embedded sample'}"
          f"\n  experiments "
          f"{plan.experiments}, seeds {plan.seeds}\n  outputs under {plan.out.resolve()}", flush=True)
    for name, why in plan.left_out.items():
        print(f"  bench: leaving out {name}: {why}; to bench it anyway: segvae bench RUN... --backends "
              f"{','.join([*plan.bench_settings.get('backends', []), name])}", flush=True)
    costs: dict = {}
    est = estimate_plan(plan, retrain, costs)
    fitted = None if full_epochs else fitted_before(plan.out, preset)
    if fitted is None and not full_epochs and not any(run.exists() for _, run, _ in plan.runs):
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
    ran: list[list[str]] = []
    reused: list[str] = []
    stage_seconds: dict[str, float] = {}
    t = time.perf_counter()
    _train_stage(plan, retrain, ran, reused)
    stage_seconds["train"] = _stage_done("train", t, t0)
    for stage, argvs in (("judges", plan.judges), ("export", plan.exports), ("bench", [plan.bench])):
        t = time.perf_counter()
        for argv in argvs:
            _child(argv, f"[{argv[3]} {Path(argv[4]).name}]")
            ran.append(argv)
        stage_seconds[stage] = _stage_done(stage, t, t0)
    ran.append(plan.report)
    run_argv = ["segvae", *sys.argv[1:]] if sys.argv else []
    atomic_write_json(plan.out / PIPELINE_FILE, {
        "preset": preset, "description": plan.p.description, "data_root": str(plan.root) if plan.root else "embedded",
        "experiments": plan.experiments, "seeds": plan.seeds, "reused_runs": reused,
        "commands": ([shlex.join(run_argv)] if run_argv else []) + [shlex.join(a) for a in ran],
        "argv": ([run_argv] if run_argv else []) + ran,
        "wall_seconds": time.perf_counter() - t0, "stage_seconds": stage_seconds,
        "estimate": {"stage_seconds": est.stages, "calibration_seconds": est.calibration_s},
        "bench_left_out": plan.left_out, "unet_epochs_fitted": plan.unet_epochs, "machine": machine().as_dict()})
    _child(plan.report, "[report]")
    wall = time.perf_counter() - t0
    html = (plan.out / "report.html").resolve()
    print(f"segvae run finished in {wall / 60:.1f} min; report: {html}", flush=True)
    return {"out": plan.out, "wall_seconds": wall, "html": html, "md": (plan.out / "report.md").resolve()}


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
        if retrain or not judge_is_current(plan.out / JUDGES_DIR / ds, judge_settings(ds, plan.root, epochs)):
            judges.append((ds, epochs))
    return estimate(runs, judges, plan.root, plan.p.export, plan.bench_settings, costs)


def _stage_done(stage: str, t: float, t0: float) -> float:
    seconds = time.perf_counter() - t
    print(f"[{stage}] done in {seconds / 60:.1f} min ({(time.perf_counter() - t0) / 60:.1f} min so far)", flush=True)
    return seconds


def run_state(run: Path, cfg: ExperimentConfig) -> str:
    """What OUT/<run> holds for this config: 'finished' (metrics written), 'same' (the same config,
    unfinished: resume it), 'other' (another config, or nothing readable) or 'none'.

    Why: re-running `segvae run` after a crash, a Ctrl-C or a report fix must not redo hours of
    finished training. Configs are compared through ExperimentConfig, so a config.json written
    before a field with a default was added still matches.
    """
    from harness.run_folder import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, load_config

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
    from harness.run_folder import LABELSWAP_FILE, METRICS_FILE

    for name in (METRICS_FILE, LABELSWAP_FILE):
        (run / name).unlink(missing_ok=True)


def _child(argv: list[str], tag: str):
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


def load_judges(folder: str | os.PathLike) -> dict:
    """{dataset: judge.score} for every judge under folder (OUT/judges/<dataset>/): what
    `segvae bench --judges` scores the label swaps with."""
    from harness.judge import load_judge

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--judges folder not found: {folder} (expected OUT/judges from `segvae judge`)")
    return {d.name: load_judge(d).score for d in sorted(folder.iterdir()) if d.is_dir()}


def _judge_run(run: Path, judges: dict, root: Path):
    """Judge a CVAE run in PyTorch (harness.labelswap.judge_swaps) and record, beside the scores, the
    judge's fitness and the run's collapse metrics (measured here if training did not), so a swap
    score is never read without them."""
    from harness.collapse import collapse_metrics
    from harness.data import build_splits
    from harness.io import read_json
    from harness.labelswap import judge_swaps
    from harness.run_folder import LABELSWAP_FILE, METRICS_FILE, load_run

    cfg, model = load_run(run)
    if cfg.task != "cvae" or cfg.dataset not in judges:
        return
    judge = judges[cfg.dataset]
    test = build_splits(cfg, root)["test"]
    scores = judge_swaps(model, test, judge, cfg.num_classes, cfg.model.latent_dim)
    collapse = read_json(run / METRICS_FILE, "metrics").get("collapse")
    record = {"recon": {"judge_acc_true_label": scores.pop("judge_acc_true_label")},
              "judge": {"test_acc_real": judge.meta.get("test_acc"), "judge_fit": judge.meta.get("fit"),
                        "judge_fit_reasons": judge.meta.get("fit_reasons"),
                        **scores}}
    if not isinstance(collapse, dict):  # a run trained before collapse was measured at training time
        record["collapse"] = collapse_metrics(model, test, cfg.num_classes)
    atomic_write_json(run / LABELSWAP_FILE, record)  # the judge stage's own file: metrics.json stays training's
