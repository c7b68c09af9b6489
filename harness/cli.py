"""`segvae` command line: train, judge, export, predict, bench, compare, report, run.

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


def _train_parser(sub) -> None:
    """`segvae train EXPERIMENT`: the registry recipe, flags override it."""
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
                   help="auto (the UNets' default): bf16 where the CPU/GPU has native bf16, fp16 on GPUs without it, "
                        "else fp32")
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


def _judge_parser(sub) -> None:
    """`segvae judge DATASET`: the label-swap judge, and with --runs its scores of CVAE runs."""
    j = sub.add_parser("judge", help="train the label-swap judge of a dataset; with --runs, score CVAE runs")
    j.add_argument("dataset", choices=["mnist", "cifar10"])
    j.add_argument("--data-root", help="dataset root (default: the data --runs recorded, else the embedded sample)")
    j.add_argument("--out", help="judge folder (default: runs/judges/DATASET)")
    j.add_argument("--epochs", type=_positive_int, help="default: the judge recipe's")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--runs", nargs="+", default=[], help="CVAE run folders to score (writes RUN/labelswap.json)")
    j.add_argument("--retrain", action="store_true",
                   help="train again even when --out holds a judge with the same settings")


def _predict_parser(sub) -> None:
    """`segvae predict`: the ORT-only deployment path (exports.predict)."""
    pr = sub.add_parser("predict", help="masks and overlays with ONNX Runtime only")
    pr.add_argument("--onnx", required=True)
    pr.add_argument("images", nargs="+")
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--threads", type=_positive_int)


def _run_parser(sub) -> None:
    """`segvae run`: the whole pipeline from a preset (harness.pipeline)."""
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segvae", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    _train_parser(sub)
    _judge_parser(sub)

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
    e.add_argument("--fp16", action="store_true",
                   help="also write model.fp16.onnx / swap.fp16.onnx for ONNX Runtime's CUDA provider "
                        "(parity-checked on the CPU provider within --fp16-tolerance x output scale)")
    e.add_argument("--fp16-tolerance", type=_positive_float, default=1e-2,  # exports.onnx_export.FP16_TOLERANCE
                   help="fp16 parity bound, x max(1, max |PyTorch output|) (default 1e-2)")
    e.add_argument("--accuracy-target", type=_positive_float, default=0.99,
                   help="int8 accuracy gate for UNets: int8 Dice >= this fraction of the fp32 graph's (default "
                        "0.99, MLPerf; 0.999 for a strict run). CVAEs are gated on mean |int8 - fp32| <= 0.02 here "
                        "(judge-free); the bench gates their label-swap success")
    e.add_argument("--strict", action="store_true", help="refuse to write an int8 graph that fails the accuracy gate")
    e.add_argument("--threads", type=_positive_int, help="ONNX Runtime threads for the checks (default: all cores)")

    _predict_parser(sub)

    b = sub.add_parser("bench", help="PyTorch vs ONNX Runtime: speed (medians and 95% CIs over interleaved "
                                     "rounds), LoadGen validity and an accuracy gate")
    b.add_argument("run_dirs", nargs="+")
    b.add_argument("--data-root")
    b.add_argument("--backends", type=_csv, help="comma list (default: all available on the device)")
    b.add_argument("--scenarios", type=_csv, help="single-stream,offline,server")
    b.add_argument("--batch-sizes", type=_csv_ints)
    b.add_argument("--device", help="auto (default: CUDA when present, the local rank's GPU), cpu, cuda or cuda:N")
    b.add_argument("--threads", type=_positive_int)
    b.add_argument("--rounds", type=_positive_int, help="interleaved rounds per measurement (default 5)")
    b.add_argument("--min-queries", type=_positive_int, help="per round: queries (offline: samples), default 64")
    b.add_argument("--min-duration", type=_positive_float, help="seconds per round and measurement (default 0.5)")
    b.add_argument("--warmup", type=int, help="untimed queries before each round (default 3)")
    b.add_argument("--judges", help="folder of label-swap judges (OUT/judges) to score CVAE swaps with")
    b.add_argument("--mlperf", action="store_true", default=None,
                   help="LoadGen's full durations (600 s per round) and minimum query counts")
    b.add_argument("--server-qps", type=_positive_float,
                   help="server target rate, the same for every backend (default: 0.5 x torch eager's single-stream)")
    b.add_argument("--latency-bound-ms", type=_positive_float,
                   help="server p99 bound (default: 2 x torch eager's single-stream p90)")
    b.add_argument("--server-search", action="store_true", default=None,
                   help="also find each backend's highest Poisson rate whose p99 meets the bound")
    b.add_argument("--accuracy-samples", type=_positive_int,
                   help="class-stratified seeded subset of the test split (default: all of it)")
    b.add_argument("--accuracy-target", type=_positive_float,
                   help="gate: metric >= TARGET x the fp32 reference (default 0.99; 0.999 strict)")
    b.add_argument("--ort-opt-level", choices=["all", "extended", "basic", "disable"],
                   help="ONNX Runtime graph optimization level (default: all)")
    b.add_argument("--out", default="bench.json")

    r = sub.add_parser("report", help="rebuild report.html and report.md from saved results")
    r.add_argument("runs_dir")
    r.add_argument("--out", help="folder for the report (default: RUNS_DIR)")

    _run_parser(sub)
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


def _judge(a) -> int:
    from pathlib import Path

    from harness.judge import judge_is_current, judge_settings, load_judge, train_judge
    from harness.pipeline import _judge_run
    from harness.run_folder import data_root_for

    root = a.data_root if a.data_root or not a.runs else str(data_root_for(a.runs[0], None, "segvae judge"))
    out = Path(a.out) if a.out else Path("runs") / "judges" / a.dataset
    if not a.retrain and judge_is_current(out, judge_settings(a.dataset, root, a.epochs, a.seed)):
        print(f"[judge {a.dataset}] reusing the judge in {out} (same settings; --retrain to redo it)", flush=True)
    else:
        train_judge(a.dataset, root, out_dir=out, epochs=a.epochs, seed=a.seed)
    judges = {a.dataset: load_judge(out)}
    for run in a.runs:
        _judge_run(Path(run), judges, root)
    return 0


def _export(a) -> int:
    from harness.export_stage import export_run

    export_run(a.run_dir, out_dir=a.out, quantize=a.quantize, calib_count=a.calib_count,
               data_root=a.data_root, tolerance=a.tolerance, threads=a.threads,
               fold_batchnorm=not a.no_fold_batchnorm, int8_pixel_shuffle_up=not a.keep_convtranspose,
               fp16=a.fp16, fp16_tolerance=a.fp16_tolerance, accuracy_target=a.accuracy_target, strict=a.strict)
    _log_results(a)
    return 0


def _predict(a) -> int:
    from exports.predict import predict

    predict(a.onnx, a.images, a.out, threads=a.threads)
    return 0


def _bench(a) -> int:
    from harness.bench import BenchConfig, run_bench
    from harness.pipeline import load_judges

    fields = {k: getattr(a, k) for k in ("backends", "scenarios", "batch_sizes", "device", "threads", "rounds",
                                         "min_queries", "min_duration", "mlperf", "server_qps", "latency_bound_ms",
                                         "server_search", "accuracy_samples", "accuracy_target", "ort_opt_level", "warmup")}
    cfg = BenchConfig(**{k: v for k, v in fields.items() if v is not None})
    judge_fn = load_judges(a.judges) if a.judges else None
    run_bench(a.run_dirs, cfg, data_root=a.data_root, out=a.out, argv=sys.argv, judge_fn=judge_fn)
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


COMMANDS = {"train": _train, "judge": _judge, "export": _export, "predict": _predict, "bench": _bench,
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
