"""`segvae` command line: download, train, judge, export, predict, bench, ab, profile, compare, report, run.

Every subcommand is a thin parser over one function in its own module. A UserError prints
one clear line and exits 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import os
import sys

from harness.cli_parser import build_parser
from harness.errors import UserError
from harness.run_folder import DEFAULT_OUT


def _log_results(a) -> None:
    """After export/bench: log what they wrote to W&B when --log-with wandb (rank 0 only)."""
    if getattr(a, "log_with", "none") == "wandb":
        from harness import wandb_log

        if a.command == "export":
            wandb_log.after_export(a)
        else:
            wandb_log.after_bench(a)


def _download(a) -> int:
    from harness.data import download

    root = download(a.datasets, a.data_root)
    print(f"data in {root}; train on it with: segvae train EXPERIMENT --data-root {root}")
    return 0


def _train(a) -> int:
    from harness.config import ExperimentConfig, get_experiment
    from harness.io import read_json
    from harness.train import train

    cfg = get_experiment(a.experiment)
    if a.config:
        cfg = ExperimentConfig.from_dict(read_json(a.config, "--config"), a.config)
        if cfg.name != a.experiment:
            raise UserError(f"--config {a.config} is for experiment {cfg.name!r}, not {a.experiment!r}")
    changes = {k: v for k, v in {
        "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "image_size": a.image_size,
        "mixed_precision": a.mixed_precision, "seed": a.seed, "kl_weight": a.kl_weight,
        "max_train_samples": a.max_train_samples, "num_workers": a.num_workers,
    }.items() if v is not None}
    if a.no_augment:
        changes["augment"] = False
    if a.channels_last is not None:
        changes["channels_last"] = a.channels_last
    if a.compile:
        changes["compile"] = True
    cfg = cfg.replace(**changes)
    if a.base_channels is not None:
        cfg = cfg.with_base_channels(a.base_channels)
    cfg.validate()
    out = a.out or os.path.join(DEFAULT_OUT, cfg.name)
    train(cfg, out_dir=out, data_root=a.data_root, download=a.download, log_with=a.log_with,
          resume=a.resume)
    return 0


def _judge(a) -> int:
    from harness.judge import judge_stage

    judge_stage(a.dataset, a.runs, data_root=a.data_root, out_dir=a.out, epochs=a.epochs, seed=a.seed,
                retrain=a.retrain)
    return 0


def _export(a) -> int:
    from exports.quantize import QuantOptions
    from harness.export_stage import export_run

    types = {"u8s8": ("QUInt8", "QInt8"), "s8s8": ("QInt8", "QInt8"), "u8u8": ("QUInt8", "QUInt8")}[a.int8_types]
    quant = QuantOptions(per_channel=not a.int8_per_tensor, activations=types[0], weights=types[1],
                         op_types=tuple(a.int8_ops) if a.int8_ops else None)  # reduce_range: --reduce-range
    export_run(a.run_dir, out_dir=a.out, quantize=a.quantize, calib_count=a.calib_count,
               data_root=a.data_root, tolerance=a.tolerance, threads=a.threads,
               fold_batchnorm=not a.no_fold_batchnorm, int8_pixel_shuffle_up=not a.keep_convtranspose,
               fp16=a.fp16, fp16_tolerance=a.fp16_tolerance, accuracy_target=a.accuracy_target, strict=a.strict,
               reduce_range=a.reduce_range, max_mae=a.max_mae,
               int8_fallback=a.int8_fallback, max_fallback=a.max_fallback, quant=quant, int8_up4=a.int8_up4)
    _log_results(a)
    return 0


def _predict(a) -> int:
    from exports.predict import predict

    predict(a.onnx, a.images, a.out, threads=a.threads)
    return 0


def _bench_config(a):
    """BenchConfig and judges from the options `segvae bench` and `segvae ab` share."""
    from harness.bench import BenchConfig
    from harness.judge import load_judges

    fields = {k: getattr(a, k, None) for k in (  # the peak probe's options are the bench's alone
        "backends", "scenarios", "batch_sizes", "device", "threads", "rounds", "min_queries", "min_duration", "mlperf",
        "server_qps", "latency_bound_ms", "server_search", "accuracy_samples", "accuracy_target", "ort_opt_level",
        "warmup", "wait", "settle_s", "processes", "slices", "peak_budget_s", "peak_file")}
    cfg = BenchConfig(**{k: v for k, v in fields.items() if v is not None})
    if getattr(a, "budget_min", None) is not None:
        cfg.budget_s = 60.0 * a.budget_min
    elif a.rounds is not None:  # rounds asked for are rounds run
        cfg.budget_s = None
    return cfg, (load_judges(a.judges) if a.judges else None)


def _bench(a) -> int:
    from harness.bench import run_bench

    cfg, judge_fn = _bench_config(a)
    run_bench(a.run_dirs, cfg, data_root=a.data_root, out=a.out, argv=sys.argv, judge_fn=judge_fn)
    _log_results(a)
    return 0


def _profile(a) -> int:
    from harness.profile import profile_run

    profile_run(a.run_dir, batch_size=a.batch_size, threads=a.threads, backends=a.backends, reps=a.reps,
                peak=a.peak, out_dir=a.out, wait=a.wait, top=a.top)
    return 0


def _ab(a) -> int:
    from harness.bench.ab import run_ab

    cfg, judge_fn = _bench_config(a)
    if a.wait is None:  # the lanes take turns every 50 ms: a lane's spinning threads would slow the next one
        cfg.wait = "passive"
    return run_ab(a.run_dirs, cfg, data_root=a.data_root, out=a.out, argv=sys.argv, judge_fn=judge_fn,
                  max_slowdown=a.max_slowdown, max_accuracy_drop=a.max_accuracy_drop, md_out=a.md,
                  detect=None if a.fixed_rounds else a.detect, max_rounds=a.max_rounds)[1]


def _report(a) -> int:
    from harness.report import build_report

    build_report(a.runs_dir, out_dir=a.out)
    return 0


def _compare(a) -> int:
    from harness.compare import Allow, run_compare

    allow = Allow(missing=a.allow_missing, unstable=a.allow_unstable, gate_fail=a.allow_gate_fail,
                  no_judge=a.allow_no_judge, different_machine=a.allow_different_machine)
    return run_compare(a.old, a.new, max_slowdown=a.max_slowdown, max_accuracy_drop=a.max_accuracy_drop, out=a.out,
                       allow=allow)


def _run(a) -> int:
    from harness.launchers import launcher_config
    from harness.pipeline import run_pipeline

    launcher = launcher_config(a.launcher, a.slurm_config, partition=a.partition, account=a.account, time=a.time,
                               gpus_per_task=a.gpus_per_task, cpus_per_task=a.cpus_per_task,
                               sbatch_args=a.sbatch_arg)
    run_pipeline(preset=a.preset, data_root=a.data_root, experiments=a.experiments, seeds=a.seeds,
                 out_dir=a.out, log_with=a.log_with, retrain=a.retrain, dry_run=a.dry_run,
                 full_epochs=a.full_epochs, launcher=launcher)
    return 0


COMMANDS = {"download": _download, "train": _train, "judge": _judge, "export": _export, "predict": _predict,
            "bench": _bench, "ab": _ab, "report": _report, "run": _run, "compare": _compare,
            "profile": _profile}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"segvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
