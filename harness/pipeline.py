"""`segvae run`: data -> train -> judge -> export -> bench -> report, driven by a named preset.

Each training run is a child process (`python -m harness train --config ...`), so every run gets
a fresh Accelerator and its own threads; export, bench and report run here. Outputs:

    OUT/<experiment>[-s<seed>]/   one run directory per experiment and seed
    OUT/judges/<dataset>/         the label-swap judges
    OUT/bench.json                PyTorch vs ONNX Runtime, speed and accuracy
    OUT/report.html, report.md    the report
    OUT/pipeline.json             preset, commands, wall time

Re-running with the same OUT reuses each finished run whose config is unchanged (and each judge
with unchanged settings) and resumes an interrupted run from its last epoch checkpoint; `--retrain`
trains everything again.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import EXPERIMENTS, ExperimentConfig, get_experiment
from harness.errors import UserError
from harness.io import atomic_write_json


# The presets weight the KL term (a beta-VAE): it pushes class information out of z, so a swapped
# label changes the class. MNIST, chosen on the validation split (1,200 images, 40 epochs): swap
# success 93.4% at weight 4, 94.6% at 6, 96.7% at 8, with true-label reconstructions judged right
# 98.6-98.8% throughout (weight 1: about 50%). CIFAR-10 stays at 4: its swaps are capped by blurry
# reconstructions, not by the weight (the calibration note: 20.4% at 4, 21.2% at 8).
# `segvae train` keeps the plain ELBO (1.0).
SWAP_KL_WEIGHT = {"mnist": 8.0, "cifar10": 4.0}


@dataclass
class Preset:
    """Overrides applied to the registry's configs, plus what the later stages do."""
    description: str
    segmentation: dict = field(default_factory=dict)   # ExperimentConfig fields for UNets
    cvae: dict = field(default_factory=dict)           # ExperimentConfig fields for CVAEs
    unet_channels: int | None = None
    cvae_channels: int | None = None
    seeds: tuple[int, ...] = (0,)
    cvae_seeds: tuple[int, ...] | None = None           # None: the same as seeds (--seeds sets both)
    judge_epochs: int | None = None                     # None: the judge's own default
    quantize: bool = True
    bench: dict = field(default_factory=dict)           # BenchConfig fields


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "A quick CPU look (README's first command): the embedded sample, small widths, short runs; "
        "6-7 minutes on 2 cores with bf16, 8 in fp32.",
        segmentation={"epochs": 25, "image_size": 128, "batch_size": 8, "lr": 3e-3},
        cvae={"epochs": 20, "batch_size": 64, "early_stop_patience": None},
        unet_channels=16, cvae_channels=32, judge_epochs=10,
        bench={"batch_sizes": [1, 8], "min_queries": 10, "min_duration": 0.5, "warmup": 2,
               "accuracy_samples": 200, "backends": ["torch-eager", "torch-bf16", "ort-fp32", "ort-int8"]},
    ),
    "cpu": Preset(
        "A thorough CPU run on the full shared data (../shared/data): the registry's recipes with bf16 "
        "UNets over 3 seeds (9-11 minutes of training per UNet on 2 cores), one seed per CVAE "
        "(about 4 and 9 minutes).",
        segmentation={"mixed_precision": "bf16"},
        cvae={"early_stop_patience": None},
        judge_epochs=12, seeds=(0, 1, 2), cvae_seeds=(0,),
        bench={"batch_sizes": [1, 8], "min_queries": 20, "min_duration": 1.0, "accuracy_samples": 120},
    ),
    "gpu": Preset(
        "A GPU run with the seed's settings: 64 base channels, 256 px, more epochs, bf16.",
        segmentation={"image_size": 256, "epochs": 100, "batch_size": 32, "mixed_precision": "bf16"},
        cvae={"epochs": 100, "batch_size": 256, "mixed_precision": "bf16"},
        unet_channels=64, cvae_channels=128, seeds=(0, 1, 2),
        bench={"batch_sizes": [1, 8, 32, 128], "min_queries": 100, "min_duration": 5.0},
    ),
}


def preset_config(name: str, preset: Preset, seed: int) -> ExperimentConfig:
    cfg = get_experiment(name)
    if cfg.task == "cvae" and cfg.dataset in SWAP_KL_WEIGHT:
        cfg = cfg.replace(kl_weight=SWAP_KL_WEIGHT[cfg.dataset])
    cfg = cfg.replace(**(preset.segmentation if cfg.task == "segmentation" else preset.cvae), seed=seed)
    channels = preset.unet_channels if cfg.task == "segmentation" else preset.cvae_channels
    if channels:
        cfg = cfg.with_base_channels(channels)
    return cfg.validate()


def task_seeds(preset: Preset, task: str, override: tuple[int, ...] | None) -> tuple[int, ...]:
    if override:
        return tuple(override)
    return tuple(preset.cvae_seeds or preset.seeds) if task == "cvae" else tuple(preset.seeds)


def run_dir_name(name: str, seed: int, seeds: tuple[int, ...]) -> str:
    return name if len(seeds) == 1 else f"{name}-s{seed}"


def run_pipeline(preset: str = "quick", data_root=None, experiments=None, seeds=None, out_dir="runs",
                 log_with: str = "none", retrain: bool = False) -> dict:
    from harness.data import resolve_data_root

    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}: expected one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    experiments = list(experiments or EXPERIMENTS)
    for name in experiments:
        get_experiment(name)  # clear error for an unknown name before any work starts
    override = tuple(seeds) if seeds else None
    seeds = {task: list(task_seeds(p, task, override)) for task in ("segmentation", "cvae")}
    root = resolve_data_root(data_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    commands: list[str] = [" ".join(shlex.quote(a) for a in ["segvae", *sys.argv[1:]])] if sys.argv else []
    stage_seconds: dict[str, float] = {}
    print(f"segvae run: preset {preset!r} ({p.description})\n  data {root}\n  experiments {experiments}, "
          f"seeds {seeds}\n  outputs under {out.resolve()}", flush=True)

    # 1. train
    primary: list[Path] = []
    reused: list[str] = []
    t = time.perf_counter()
    for name in experiments:
        own = tuple(seeds[get_experiment(name).task])
        for seed in own:
            cfg = preset_config(name, p, seed)
            run = out / run_dir_name(name, seed, own)
            cfg_path = out / "configs" / f"{run.name}.json"
            atomic_write_json(cfg_path, cfg.to_dict())
            argv = ["train", name, "--config", str(cfg_path), "--data-root", str(root), "--out", str(run),
                    "--log-with", log_with]
            commands.append(" ".join(["segvae", *map(shlex.quote, argv)]))
            state = run_state(run, cfg)
            if state == "finished" and not retrain:
                print(f"[train {run.name}] reusing the finished run in {run} (same config; --retrain to redo it)",
                      flush=True)
                reused.append(run.name)
            else:
                if retrain or state == "other":
                    _forget_result(run)
                resume = state == "same" and not retrain
                _child(argv + (["--resume"] if resume else []), f"[train {run.name}]")
            if seed == own[0]:
                primary.append(run)
    stage_seconds["train"] = time.perf_counter() - t

    # 2. judges for the CVAE datasets
    t = time.perf_counter()
    judges = _train_judges(experiments, root, out, p, commands, reused, retrain)
    for run in primary:
        _judge_run(run, judges, root)
    stage_seconds["judges"] = time.perf_counter() - t

    # 3. export (+ int8)
    from exports.onnx_export import export_run

    t = time.perf_counter()
    for run in primary:
        print(f"[export {run.name}]", flush=True)
        export_run(run, quantize="int8" if p.quantize else None, data_root=root)
        commands.append(f"segvae export {shlex.quote(str(run))}" + (" --quantize int8" if p.quantize else ""))
    stage_seconds["export"] = time.perf_counter() - t

    # 4. bench
    from harness.bench import BenchConfig, run_bench

    t = time.perf_counter()
    bench_cfg = BenchConfig(**p.bench)
    judge_fns = {ds: j.score for ds, j in judges.items()}
    run_bench(primary, bench_cfg, data_root=root, out=out / "bench.json", argv=sys.argv, judge_fn=judge_fns)
    commands.append("segvae bench " + " ".join(shlex.quote(str(r)) for r in primary)
                    + f" --data-root {shlex.quote(str(root))} --out {shlex.quote(str(out / 'bench.json'))}")
    stage_seconds["bench"] = time.perf_counter() - t

    # 5. report
    from harness.report import build_report

    wall = time.perf_counter() - t0
    atomic_write_json(out / "pipeline.json", {
        "preset": preset, "description": p.description, "data_root": str(root), "experiments": experiments,
        "seeds": seeds, "reused_runs": reused, "commands": commands, "wall_seconds": wall, "stage_seconds": stage_seconds})
    paths = build_report(out)
    commands.append(f"segvae report {shlex.quote(str(out))}")
    wall = time.perf_counter() - t0
    print(f"segvae run finished in {wall / 60:.1f} min; report: {Path(paths['html']).resolve()}", flush=True)
    return {"out": out, "wall_seconds": wall, **paths}


def run_state(run: Path, cfg: ExperimentConfig) -> str:
    """What OUT/<run> holds for this config: 'finished' (metrics written), 'same' (the same config,
    unfinished: resume it), 'other' (another config, or nothing readable) or 'none'.

    Why: re-running `segvae run` after a crash, a Ctrl-C or a report fix must not redo hours of
    finished training. Configs are compared through ExperimentConfig, so a config.json written
    before a field with a default was added still matches.
    """
    from harness.checkpoint import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, load_config

    if not (run / CONFIG_FILE).is_file():
        return "none"
    try:
        if load_config(run) != cfg:
            return "other"
    except UserError:
        return "other"
    return "finished" if (run / METRICS_FILE).is_file() and (run / WEIGHTS_FILE).is_file() else "same"


def _forget_result(run: Path):
    """A run directory about to be retrained with another config loses its old metrics first, so a
    crash part-way can never pair the new config with the old results."""
    from harness.checkpoint import METRICS_FILE

    (run / METRICS_FILE).unlink(missing_ok=True)


def _child(argv: list[str], tag: str):
    """Run `python -m harness ARGV`, streaming its output; a failure stops the pipeline with its tail."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    tail: list[str] = []
    for line in proc.stdout:
        for part in line.replace("\r", "\n").splitlines():
            if part.strip() and "it/s" not in part and "s/it" not in part:
                print(f"{tag} {part}", flush=True)
                tail = (tail + [part])[-20:]
    if proc.wait() != 0:
        raise UserError(f"{tag} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _train_judges(experiments, root: Path, out: Path, p: Preset, commands: list[str], reused: list[str],
                  retrain: bool) -> dict:
    from harness.judge import judge_is_current, judge_settings, load_judge, train_judge

    judges = {}
    for name in experiments:
        cfg = get_experiment(name)
        if cfg.task != "cvae" or cfg.dataset in judges:
            continue
        jdir = out / "judges" / cfg.dataset
        if not retrain and judge_is_current(jdir, judge_settings(cfg.dataset, root, p.judge_epochs)):
            print(f"[judge {cfg.dataset}] reusing the judge in {jdir} (same settings; --retrain to redo it)",
                  flush=True)
            reused.append(f"judges/{cfg.dataset}")
        else:
            print(f"[judge {cfg.dataset}] training the label-swap judge", flush=True)
            train_judge(cfg.dataset, root, out_dir=jdir, epochs=p.judge_epochs)
        commands.append(f"python -c \"from harness.judge import train_judge; "
                        f"train_judge('{cfg.dataset}', '{root}', out_dir='{jdir}', epochs={p.judge_epochs})\"")
        judges[cfg.dataset] = load_judge(jdir)
    return judges


def _judge_run(run: Path, judges: dict, root: Path):
    """Judge a CVAE run in PyTorch (harness.labelswap.judge_swaps) and record, beside the scores, the
    judge's fitness and the run's collapse metrics (measured here if training did not), so a swap
    score is never read without them."""
    from harness.checkpoint import METRICS_FILE, load_run
    from harness.collapse import collapse_metrics
    from harness.data import build_splits
    from harness.io import read_json
    from harness.labelswap import judge_swaps

    cfg, model = load_run(run)
    if cfg.task != "cvae" or cfg.dataset not in judges:
        return
    judge = judges[cfg.dataset]
    test = build_splits(cfg, root)["test"]
    scores = judge_swaps(model, test, judge, cfg.num_classes, cfg.model.get("latent_dim", 16))
    metrics = read_json(run / METRICS_FILE, "metrics")
    if not isinstance(metrics.get("collapse"), dict):
        metrics["collapse"] = collapse_metrics(model, test, cfg.num_classes)
    metrics.setdefault("recon", {})["judge_acc_true_label"] = scores.pop("judge_acc_true_label")
    metrics["judge"] = {"test_acc_real": judge.meta.get("test_acc"), "judge_fit": judge.meta.get("fit"),
                        "judge_fit_reasons": judge.meta.get("fit_reasons"), **scores}
    atomic_write_json(run / METRICS_FILE, metrics)
