"""`segvae` command line: train, export, predict, bench, compare, report, run.

Every subcommand is a thin parser over one function in its own module. A UserError prints
one clear line and exits 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys

from harness.config import PRECISIONS
from harness.errors import UserError


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def _csv(s: str) -> list[str]:
    return [p for p in s.replace(" ", ",").split(",") if p]


def _csv_ints(s: str) -> list[int]:
    return [_positive_int(p) for p in _csv(s)]


def _csv_seeds(s: str) -> list[int]:
    try:
        seeds = [int(p) for p in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {s!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integer seeds, got {s!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segvae", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one experiment (works under `accelerate launch`)")
    t.add_argument("experiment")
    t.add_argument("--config", help="JSON config to start from (e.g. a run's config.json); flags override it")
    t.add_argument("--data-root", help="dataset root (default: the embedded real sample)")
    t.add_argument("--download", action="store_true", help="let torchvision download missing data (online only)")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=_positive_float)
    t.add_argument("--image-size", type=_positive_int)
    t.add_argument("--base-channels", type=_positive_int)
    t.add_argument("--mixed-precision", choices=PRECISIONS,
                   help="auto (the UNets' default): bf16 where the CPU/GPU has native bf16, else fp32")
    t.add_argument("--seed", type=int)
    t.add_argument("--kl-weight", type=float)
    t.add_argument("--max-train-samples", type=_positive_int)
    t.add_argument("--num-workers", type=int)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC activations (default on: oneDNN's fast layout on CPUs, tensor cores on GPUs)")
    t.add_argument("--compile", action="store_true", help="torch.compile (inductor) the model for training")
    t.add_argument("--out", help="run directory (default: runs/<experiment>)")
    t.add_argument("--log-with", choices=["wandb", "tensorboard", "none"], default="none")
    t.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --out (checkpoints are taken at each epoch's end)")

    e = sub.add_parser("export", help="export a trained run to ONNX and check parity")
    e.add_argument("run_dir")
    e.add_argument("--quantize", choices=["int8"])
    e.add_argument("--calib-count", type=_positive_int, default=128)
    e.add_argument("--data-root")
    e.add_argument("--tolerance", type=_positive_float, default=1e-4)
    e.add_argument("--out", help="output folder (default: RUN_DIR/onnx)")
    e.add_argument("--no-fold-batchnorm", action="store_true",
                   help="UNet: keep BatchNorm nodes instead of folding them into the convs")
    e.add_argument("--keep-convtranspose", action="store_true",
                   help="UNet int8: quantize the graph with its ConvTranspose (which then runs fp32 on ORT's CPU EP) "
                        "instead of the 1x1 Conv + DepthToSpace form")

    pr = sub.add_parser("predict", help="masks and overlays with ONNX Runtime only")
    pr.add_argument("--onnx", required=True)
    pr.add_argument("images", nargs="+")
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--threads", type=_positive_int)

    b = sub.add_parser("bench", help="PyTorch vs ONNX Runtime: speed and accuracy")
    b.add_argument("run_dirs", nargs="+")
    b.add_argument("--data-root")
    b.add_argument("--backends", type=_csv, help="comma list (default: all available)")
    b.add_argument("--scenarios", type=_csv, help="single-stream,offline,server")
    b.add_argument("--batch-sizes", type=_csv_ints)
    b.add_argument("--threads", type=_positive_int)
    b.add_argument("--min-queries", type=_positive_int)
    b.add_argument("--min-duration", type=_positive_float, help="seconds per measurement")
    b.add_argument("--server-rate", type=_positive_float, help="queries/s for the server scenario")
    b.add_argument("--latency-bound-ms", type=_positive_float)
    b.add_argument("--accuracy-samples", type=_positive_int)
    b.add_argument("--ort-opt-level", choices=["all", "extended", "basic", "disable"],
                   help="ONNX Runtime graph optimization level (default: all)")
    b.add_argument("--out", default="bench.json")

    r = sub.add_parser("report", help="rebuild report.html and report.md from saved results")
    r.add_argument("runs_dir")
    r.add_argument("--out", help="folder for the report (default: RUNS_DIR)")

    run = sub.add_parser("run", help="train, export, bench and report in one go")
    run.add_argument("--preset", default="quick")
    run.add_argument("--data-root")
    run.add_argument("--experiments", type=_csv)
    run.add_argument("--seeds", type=_csv_seeds, help="comma list, e.g. 0,1,2 (default: the preset's)")
    run.add_argument("--out", default="runs")
    run.add_argument("--log-with", choices=["wandb", "tensorboard", "none"], default="none")
    run.add_argument("--retrain", action="store_true",
                     help="train every run and judge again (default: reuse finished runs and judges in --out "
                          "whose settings are unchanged, resume interrupted runs)")
    return _add_extras(p, sub, export_parser=e, bench_parser=b)


def _tracker(s: str) -> str:
    if s == "wandb":
        from harness.wandb_log import check_available

        try:
            check_available()
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return s


def _add_extras(p, sub, export_parser, bench_parser) -> argparse.ArgumentParser:
    """`compare` and export/bench's --log-with, kept out of build_parser's blocks."""
    _add_log_with(export_parser, bench_parser)
    _add_compare(sub)
    return p


def _add_log_with(export_parser, bench_parser) -> None:
    """--log-with for export and bench: W&B only (offline unless `wandb login` was run)."""
    export_parser.add_argument("--log-with", type=_tracker, choices=["wandb", "none"], default="none",
                               help="wandb: log the ONNX files + export.json as a model artifact naming the "
                                    "training run (offline unless you ran `wandb login`; default: none)")
    bench_parser.add_argument("--log-with", type=_tracker, choices=["wandb", "none"], default="none",
                              help="wandb: log the results table, throughput/latency charts and env, linked to "
                                   "the export artifacts (offline unless you ran `wandb login`; default: none)")


def _log_results(a) -> None:
    """After export/bench: log what they wrote to W&B when --log-with wandb (rank 0 only)."""
    if getattr(a, "log_with", "none") == "wandb":
        from harness import wandb_log

        if a.command == "export":
            wandb_log.after_export(a)
        else:
            wandb_log.after_bench(a)


def _add_compare(sub) -> None:
    from harness.compare import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MAX_SLOWDOWN, parse_fraction

    def share(s: str) -> float:
        try:
            return parse_fraction(s)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    c = sub.add_parser("compare", help="regression gate: compare two bench.json files (exit 1 on a regression)",
                       description="Faster / slower / no significant change per (experiment, backend, scenario, "
                                   "batch size), from the 95% intervals bench.json carries, plus accuracy "
                                   "pass/fail; prints a Markdown table. Exit 0: no regression, 1: regression, "
                                   "2: unreadable input.",
                       epilog="example: segvae compare main/bench.json pr/bench.json --out comparison.md")
    c.add_argument("old", metavar="OLD.json", help="the baseline bench.json (e.g. from the main branch)")
    c.add_argument("new", metavar="NEW.json", help="the bench.json to judge (e.g. from the pull request)")
    c.add_argument("--max-slowdown", type=share, default=DEFAULT_MAX_SLOWDOWN, metavar="SHARE",
                   help=f"a row is slower when NEW is worse by more than this (and the intervals are disjoint); "
                        f"5%% or 0.05 (default: {100 * DEFAULT_MAX_SLOWDOWN:g}%%)")
    c.add_argument("--max-accuracy-drop", type=_nonnegative_float, default=DEFAULT_MAX_ACCURACY_DROP, metavar="DROP",
                   help=f"accuracy fails when it drops by more than this, absolute (default: {DEFAULT_MAX_ACCURACY_DROP})")
    c.add_argument("--out", metavar="FILE.md", help="also write the Markdown report to this file (default: print only)")


def _nonnegative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


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
    out = a.out or os.path.join("runs", cfg.name)
    train(cfg, out_dir=out, data_root=a.data_root, download=a.download, log_with=a.log_with,
          resume=a.resume)
    return 0


def _export(a) -> int:
    from exports.onnx_export import export_run

    export_run(a.run_dir, out_dir=a.out, quantize=a.quantize, calib_count=a.calib_count,
               data_root=a.data_root, tolerance=a.tolerance, fold_batchnorm=not a.no_fold_batchnorm,
               int8_pixel_shuffle_up=not a.keep_convtranspose)
    _log_results(a)
    return 0


def _predict(a) -> int:
    from harness.predict import predict

    predict(a.onnx, a.images, a.out, threads=a.threads)
    return 0


def _bench(a) -> int:
    from harness.bench import BenchConfig, run_bench

    fields = {k: getattr(a, k) for k in ("backends", "scenarios", "batch_sizes", "threads", "min_queries",
                                         "min_duration", "server_rate", "latency_bound_ms", "accuracy_samples",
                                         "ort_opt_level")}
    cfg = BenchConfig(**{k: v for k, v in fields.items() if v is not None})
    run_bench(a.run_dirs, cfg, data_root=a.data_root, out=a.out, argv=sys.argv)
    _log_results(a)
    return 0


def _report(a) -> int:
    from harness.report import build_report

    build_report(a.runs_dir, out_dir=a.out)
    return 0


def _compare(a) -> int:
    from harness.compare import run_compare

    return run_compare(a.old, a.new, max_slowdown=a.max_slowdown, max_accuracy_drop=a.max_accuracy_drop, out=a.out)


def _run(a) -> int:
    from harness.pipeline import run_pipeline

    run_pipeline(preset=a.preset, data_root=a.data_root, experiments=a.experiments, seeds=a.seeds,
                 out_dir=a.out, log_with=a.log_with, retrain=a.retrain)
    return 0


COMMANDS = {"train": _train, "export": _export, "predict": _predict, "bench": _bench,
            "report": _report, "run": _run, "compare": _compare}


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
