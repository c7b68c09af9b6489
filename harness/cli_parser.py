"""The `segvae` argument parser: every flag says what it does and its default; every command's help
ends with one example. Kept apart from harness/cli.py (the command functions) so both stay short."""
from __future__ import annotations

import argparse
import textwrap

from exports.accuracy_gate import DEFAULT_MAX_MAE, DEFAULT_TARGET
from harness.compare import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MAX_SLOWDOWN, parse_fraction
from harness.config import EXPERIMENTS, PRECISIONS
from harness.errors import UserError
from harness.presets import PRESETS
from harness.run_folder import BENCH_FILE
from harness.wandb_log import check_available

FMT = argparse.RawDescriptionHelpFormatter
LOG_WITH = ["wandb", "tensorboard", "none"]


# ---------------------------------------------------------------------------- value types
def _number(parse, ok, unparsable: str, out_of_range: str):
    """An argparse type: parse(s), then ok(value), each failure an error saying what was expected."""
    def convert(s: str):
        try:
            v = parse(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unparsable}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {out_of_range}, got {s!r}")
        return v
    return convert


positive_int = _number(int, lambda v: v >= 1, "a positive integer", "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0", "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number", "a positive finite number")
nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0", "a finite number >= 0")


def csv(s: str) -> list[str]:
    return [p for p in s.replace(" ", ",").split(",") if p]


def csv_ints(s: str) -> list[int]:
    return [positive_int(p) for p in csv(s)]


def csv_seeds(s: str) -> list[int]:
    try:
        seeds = [int(p) for p in csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {s!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integer seeds, got {s!r}")
    return seeds


def tracker(s: str) -> str:
    """--log-with wandb needs wandb installed: say so at parse time, before any work."""
    if s == "wandb":
        try:
            check_available()
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return s


def share(s: str) -> float:
    try:
        return parse_fraction(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _command(sub, name: str, help: str, example: str, description: str | None = None):
    return sub.add_parser(name, help=help, description=textwrap.fill(description or help, 100), formatter_class=FMT,
                          epilog=f"example:\n  {example}")


# ---------------------------------------------------------------------------- commands
def _download(sub) -> None:
    from harness.data import DOWNLOADABLE

    d = _command(sub, "download", "fetch data sets into --data-root (online; trains nothing)",
                 "segvae download pets mnist cifar10 --data-root /data",
                 "Fetch data sets, both splits, into --data-root in torchvision's layouts (what --data-root "
                 "expects everywhere). Files already there are checked, not fetched again.")
    d.add_argument("datasets", nargs="+", metavar="DATASET", choices=DOWNLOADABLE,
                   help=f"one or more of: {', '.join(DOWNLOADABLE)} (segvae run needs all three)")
    d.add_argument("--data-root", required=True, help="folder to fetch into (created if missing)")


def _train(sub) -> None:
    t = _command(sub, "train", "train one experiment (works under `accelerate launch`)",
                 "segvae train unet-mp-tr-bce --data-root ../shared/data --out runs/unet-mp-tr-bce",
                 "Train one experiment of the registry. Flags override its recipe (harness/config.py); "
                 "unset flags keep the recipe's value.")
    t.add_argument("experiment", metavar="EXPERIMENT",
                   help=f"one of: {', '.join(EXPERIMENTS)}")
    t.add_argument("--config", help="JSON config to start from, e.g. a run's config.json (default: the registry's recipe)")
    t.add_argument("--data-root", help="dataset root in torchvision's layouts (default: the embedded real sample)")
    t.add_argument("--download", action="store_true",
                   help="let torchvision download missing data into --data-root, then train (online only; "
                        "`segvae download` fetches without training; default: off)")
    t.add_argument("--epochs", type=positive_int, help="training epochs (default: the recipe's)")
    t.add_argument("--batch-size", type=positive_int, help="per-process batch size (default: the recipe's)")
    t.add_argument("--lr", type=positive_float, help="peak learning rate (default: the recipe's)")
    t.add_argument("--image-size", type=positive_int, help="UNet input size in pixels (default: the recipe's, 128)")
    t.add_argument("--base-channels", type=positive_int, help="width of the first block (default: the recipe's)")
    t.add_argument("--mixed-precision", choices=PRECISIONS,
                   help="auto: bf16 where the CPU/GPU computes it natively, fp16 on GPUs without it, else fp32 "
                        "(default: the recipe's: auto for UNets, no (fp32) for CVAEs)")
    t.add_argument("--seed", type=int, help="training seed (default: the recipe's, 0)")
    t.add_argument("--kl-weight", type=float, help="CVAE: weight of the KL term (default: the recipe's)")
    t.add_argument("--max-train-samples", type=positive_int, help="train on at most N images (default: all)")
    t.add_argument("--num-workers", type=nonnegative_int, help="DataLoader worker processes (default: the recipe's)")
    t.add_argument("--no-augment", action="store_true", help="turn data augmentation off (default: on)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC activations: oneDNN's fast layout on CPUs, tensor cores on GPUs (default: on)")
    t.add_argument("--compile", action="store_true", help="torch.compile (inductor) the model (default: off)")
    t.add_argument("--out", help="run folder (default: runs/EXPERIMENT)")
    t.add_argument("--log-with", choices=LOG_WITH, default="none",
                   help="experiment tracker; W&B runs offline unless you ran `wandb login` (default: none)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the last epoch checkpoint in --out (default: start fresh)")


def _judge(sub) -> None:
    j = _command(sub, "judge", "train the label-swap judge of a dataset; with --runs, score CVAE runs",
                 "segvae judge mnist --runs runs/cvae-mnist --out runs/judges/mnist",
                 "Train (or reuse) the classifier that scores label-swapped outputs, record its fitness on "
                 "real and degraded test images in judge.json, and with --runs write RUN/labelswap.json.")
    j.add_argument("dataset", choices=["mnist", "cifar10"], help="the dataset whose judge to train")
    j.add_argument("--data-root", help="dataset root (default: the data the first --runs run recorded, "
                                       "else the embedded sample)")
    j.add_argument("--out", help="judge folder (default: runs/judges/DATASET)")
    j.add_argument("--epochs", type=positive_int, help="training epochs (default: the judge recipe's)")
    j.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    j.add_argument("--runs", nargs="+", default=[], metavar="RUN",
                   help="CVAE run folders to score; each gets RUN/labelswap.json (default: none)")
    j.add_argument("--retrain", action="store_true",
                   help="train again even when --out holds a judge with the same settings (default: reuse it)")


def _export(sub) -> None:
    e = _command(sub, "export", "export a trained run to ONNX, check parity and gate int8 accuracy",
                 "segvae export runs/unet-mp-tr-bce --quantize int8",
                 "Write RUN/onnx/*.onnx and export.json after checking each graph against PyTorch on ORT's CPU "
                 "provider; nothing is written when a check fails.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `segvae train`")
    e.add_argument("--quantize", choices=["int8"], help="also write the int8 graph, calibrated on training "
                                                        "images (default: fp32 only)")
    e.add_argument("--calib-count", type=positive_int, default=128,
                   help="training images for int8 calibration (default: 128)")
    e.add_argument("--data-root", help="data for parity, calibration and the gate (default: the data the run "
                                       "recorded in RUN_DIR/run.json)")
    e.add_argument("--tolerance", type=positive_float, default=1e-4,
                   help="fp32 parity bound, x max(1, max |PyTorch output|) (default: 1e-4)")
    e.add_argument("--out", help="output folder (default: RUN_DIR/onnx)")
    e.add_argument("--no-fold-batchnorm", action="store_true",
                   help="UNet: keep BatchNorm nodes instead of folding them into the convs (default: fold)")
    e.add_argument("--keep-convtranspose", action="store_true",
                   help="int8: quantize the graph with its ConvTranspose layers (fp32 on ORT's CPU provider) "
                        "instead of their Conv + DepthToSpace form: the UNet's 1x1 Conv, the CVAE decoder's "
                        "3x3 or 2x2 Conv, see --int8-up4 (default: the rewrite)")
    e.add_argument("--int8-up4", choices=["conv3x3", "conv2x2"], default="conv3x3",
                   help="CVAE int8: the form of ConvTranspose2d(4, stride 2, padding 1) in the quantized graph: "
                        "conv3x3 (one 3x3 Conv to 4x the channels + DepthToSpace, 2.25x the MACs) or conv2x2 "
                        "(one 2x2 Conv, a crop per output phase + DepthToSpace, the ConvTranspose's MACs) "
                        "(default: conv3x3)")
    e.add_argument("--fp16", action="store_true",
                   help="also write model.fp16.onnx / swap.fp16.onnx for ORT's CUDA provider (default: off)")
    e.add_argument("--fp16-tolerance", type=positive_float, default=1e-2,
                   help="fp16 parity bound, x max(1, max |PyTorch output|) (default: 1e-2)")
    e.add_argument("--accuracy-target", type=positive_float, default=DEFAULT_TARGET,
                   help="int8 gate: UNet int8 Dice >= TARGET x the fp32 graph's; CVAEs: mean |int8 - fp32| <= "
                        f"{DEFAULT_MAX_MAE} (default: {DEFAULT_TARGET}, MLPerf; 0.999 strict)")
    e.add_argument("--strict", action="store_true",
                   help="refuse to write an int8 graph that fails the gate (default: write it, marked FAIL)")
    e.add_argument("--reduce-range", choices=["auto", "on", "off"], default="auto",
                   help="7-bit int8 weights, ONNX Runtime's remedy for U8S8 saturation; auto: on for CPUs "
                        "without VNNI, off with it (default: auto; recorded in export.json)")
    e.add_argument("--max-mae", type=positive_float, default=0.02,
                   help="CVAE int8 gate: the largest mean |int8 - fp32| of the swap outputs on [0, 1] images "
                        "(default: 0.02)")
    e.add_argument("--int8-fallback", action="store_true",
                   help="accuracy-aware int8: when the gate fails, return the quantized layers that add the most "
                        "error to fp32 one at a time until it passes; export.json says which, the metric and the "
                        "speed it cost (default: off)")
    e.add_argument("--max-fallback", type=positive_int, default=8,
                   help="with --int8-fallback: at most this many layers back in fp32 (default: 8)")
    e.add_argument("--int8-ops", type=csv,
                   help="op types to quantize, comma list, e.g. Conv,Gemm,MatMul (default: every type ORT can)")
    e.add_argument("--int8-per-tensor", action="store_true",
                   help="one weight scale per tensor instead of per output channel (default: per channel)")
    e.add_argument("--int8-types", choices=["u8s8", "s8s8", "u8u8"], default="u8s8",
                   help="activation and weight types (default: u8s8, the fast pair on x86)")
    e.add_argument("--threads", type=positive_int, help="ONNX Runtime threads for the checks (default: all cores)")
    e.add_argument("--log-with", type=tracker, choices=["wandb", "none"], default="none",
                   help="wandb: log the ONNX files + export.json as a model artifact naming the training run "
                        "(offline unless you ran `wandb login`; default: none)")


def _predict(sub) -> None:
    pr = _command(sub, "predict", "masks and overlays with ONNX Runtime only (no PyTorch)",
                  "segvae predict --onnx runs/unet-mp-tr-bce/onnx/model.onnx cat.jpg dog.png --out predictions")
    pr.add_argument("--onnx", required=True, help="a UNet graph written by `segvae export` (required)")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    pr.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    pr.add_argument("--threads", type=positive_int, help="ONNX Runtime threads (default: all cores)")


def _bench(sub) -> None:
    b = _command(sub, "bench", "PyTorch vs ONNX Runtime: speed with intervals, stability, accuracy gate",
                 "segvae bench runs/unet-mp-tr-bce --backends torch-eager,ort-fp32,ort-int8 --out bench.json",
                 "Time every backend in interleaved rounds (medians with intervals labelled by their true coverage, "
                 "backends in a shuffled order each round), say whether each figure is stable and whether MLPerf "
                 "LoadGen would accept it, and gate each backend's accuracy against torch fp32. Needs `segvae "
                 "export` first.")
    b.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="exported run folders (RUN_DIR/onnx must be current)")
    _bench_options(b)
    b.add_argument("--peak-budget-s", type=positive_float,
                   help="seconds the matmul peak probe may take; it sizes itself and skips precisions this "
                        "machine only emulates (default: 15)")
    b.add_argument("--peak-file", help="reuse the probe stored here when it was measured on this machine at the "
                                       "same threads, else probe and store it (default: none: probe every time; "
                                       "segvae run passes OUT/peak.json, so it probes once)")
    b.add_argument("--out", default=BENCH_FILE, help=f"results file (default: {BENCH_FILE})")
    b.add_argument("--log-with", type=tracker, choices=["wandb", "none"], default="none",
                   help="wandb: log the results table, throughput/latency charts and env, linked to the export "
                        "artifacts (offline unless you ran `wandb login`; default: none)")


def _bench_options(b) -> None:
    """The measuring options `segvae bench` and `segvae ab` share."""
    b.add_argument("--data-root", help="data for the accuracy pass (default: the data each run recorded)")
    b.add_argument("--backends", type=csv, help="comma list, e.g. torch-eager,ort-int8 (default: all available "
                                                "on the device, less those whose precision it only emulates, "
                                                "e.g. torch-bf16 on a CPU without AVX512-BF16/AMX)")
    b.add_argument("--scenarios", type=csv, help="comma list of single-stream, offline, server "
                                                 "(default: single-stream,offline)")
    b.add_argument("--batch-sizes", type=csv_ints, help="offline batch sizes, comma list (default: 8; batch 1 "
                                                                    "is the single-stream scenario's loop)")
    b.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto: CUDA when present, the local "
                                    "rank's GPU)")
    b.add_argument("--threads", type=positive_int, help="threads per backend (default: all cores, divided by "
                                                        "the process count)")
    b.add_argument("--rounds", type=positive_int, help="interleaved rounds per measurement (default: 12: the "
                                                                   "interval [x(3), x(10)], 96.1%% coverage)")
    b.add_argument("--budget-min", type=positive_float,
                   help="fit the bench in this many minutes: where --rounds would not fit (a slower CPU, long "
                        "compiles), each run gets fewer rounds, never below 6 (96.9%% interval) (default: 8, or "
                        "none when --rounds is given)")
    b.add_argument("--min-queries", type=positive_int, help="per round: queries, offline: samples (default: 64)")
    b.add_argument("--min-duration", type=positive_float, help="seconds per round and measurement (default: 0.5)")
    b.add_argument("--warmup", type=nonnegative_int, help="untimed queries before each round (default: 3)")
    b.add_argument("--judges", help="folder of label-swap judges (e.g. runs/judges) to score CVAE swaps "
                                    "(default: none: CVAEs are gated on output error only)")
    b.add_argument("--mlperf", action="store_true", default=None,
                   help="LoadGen's full durations (600 s per round) and minimum counts (default: off)")
    b.add_argument("--server-qps", type=positive_float,
                   help="server target rate, the same for every backend (default: 0.5 x torch eager's single-stream)")
    b.add_argument("--latency-bound-ms", type=positive_float,
                   help="server p99 bound, the same for every backend (default: 2 x torch eager's single-stream p90)")
    b.add_argument("--server-search", action="store_true", default=None,
                   help="also find each backend's highest Poisson rate whose p99 meets the bound (default: off)")
    b.add_argument("--accuracy-samples", type=positive_int,
                   help="class-stratified, seeded subset of the test split (default: the whole test split)")
    b.add_argument("--accuracy-target", type=positive_float,
                   help=f"gate: metric >= TARGET x the torch fp32 reference (default: {DEFAULT_TARGET}; 0.999 strict)")
    b.add_argument("--ort-opt-level", choices=["all", "extended", "basic", "disable"],
                   help="ONNX Runtime graph optimization level (default: all)")
    b.add_argument("--slices", type=positive_int,
                   help="backends take turns this many times per round (each a share of the round's queries and "
                        "seconds, warm-up once per round), so the host's sub-second swings hit them alike (default: 1 in "
                        "`segvae bench`; one per 50 ms of --min-duration in `segvae ab`)")
    b.add_argument("--processes", type=positive_int,
                   help="fresh worker processes per backend, the rounds split among them: intervals then include "
                        "what a process's memory layout does to all its rounds (default: 1)")
    b.add_argument("--wait", choices=["spin", "passive"],
                   help="how idle threads wait: spin (libgomp's and ONNX Runtime's defaults) or passive "
                        "(OMP_WAIT_POLICY=PASSIVE, ORT spinning off: for a machine other processes share; default: spin in "
                        "`segvae bench`, passive in `segvae ab`, whose lanes take turns every 50 ms)")
    b.add_argument("--settle-s", type=nonnegative_float,
                   help="seconds to wait before a backend's turn that follows an ONNX Runtime backend's, whose "
                        "threads spin on for tens of ms on the cores the next one times (default: 0.25 with --wait "
                        "spin, 0 with passive)")


def _ab(sub) -> None:
    from harness.bench.ab import DEFAULT_MAX_ACCURACY_DROP as AB_MAX_DROP
    from harness.bench.ab import DEFAULT_DETECT as AB_DETECT
    from harness.bench.ab import DEFAULT_MAX_ROUNDS as AB_MAX_ROUNDS
    from harness.bench.ab import DEFAULT_MAX_SLOWDOWN as AB_MAX_SLOWDOWN

    a = _command(sub, "ab", "A/B regression gate: two exported run folders benched in the same rounds (exit 1 on a regression)",
                 "segvae ab main-runs/unet-mp-tr-bce pr-runs/unet-mp-tr-bce --backends ort-fp32,ort-int8 --out ab.json",
                 "Bench OLD and NEW (and more NEW) run folders in ONE session: every (side, backend) in every round, "
                 "the order shuffled per round, a paired NEW/OLD ratio per (backend, scenario, batch size) with its "
                 "interval, and accuracy gated in the same run. Compares the ONNX graphs and the weights; torch "
                 "backends run the current checkout's model code. Exit 0: no regression, 1: a regression, 2: bad input.")
    a.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="OLD then NEW (then more NEW) exported run folders")
    _bench_options(a)
    a.add_argument("--max-slowdown", type=share, default=AB_MAX_SLOWDOWN, metavar="SHARE",
                   help=f"slower = the paired NEW/OLD interval entirely below 1 and its median more than this below "
                        f"(default: {100 * AB_MAX_SLOWDOWN:g}%%; docs/benchmark.md says why)")
    a.add_argument("--max-accuracy-drop", type=nonnegative_float, default=AB_MAX_DROP, metavar="DROP",
                   help=f"accuracy fails when NEW's metric is lower than OLD's by more than this, absolute "
                        f"(default: {AB_MAX_DROP})")
    a.add_argument("--detect", type=share, default=AB_DETECT, metavar="SHARE",
                   help=f"size the session to catch a slowdown this large 9 times in 10: --rounds is the pilot, then "
                        f"as many rounds as the measured round-to-round spread needs (default: {100 * AB_DETECT:g}%%)")
    a.add_argument("--max-rounds", type=positive_int, default=AB_MAX_ROUNDS,
                   help=f"at most this many rounds when sizing (default: {AB_MAX_ROUNDS})")
    a.add_argument("--fixed-rounds", action="store_true", help="exactly --rounds rounds, no sizing (default: sized)")
    a.add_argument("--out", default="ab.json", help="results file: the bench records of both sides and the verdicts "
                                                    "(default: ab.json)")
    a.add_argument("--md", metavar="FILE.md", help="also write the Markdown verdict to this file (default: print only)")


def _profile(sub) -> None:
    pr = _command(sub, "profile", "per-layer time, PyTorch vs each ONNX Runtime graph, with GOP/s and int8 error",
                  "segvae profile runs/unet-mp-tr-bce --batch-size 8 --peak bench.json",
                  "Time every layer (module) in PyTorch (a clock on each module's forward) and the nodes that came "
                  "from it in each ONNX Runtime graph (ORT's profiler), at the bench's threads, each profiled call "
                  "taking turns with the bench's own unprofiled call; write RUN/profile.json and "
                  "RUN/profile.md. Needs `segvae export RUN --quantize int8` first.")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="an exported run folder")
    pr.add_argument("--backends", type=csv, default=["torch-eager", "ort-fp32", "ort-int8"],
                    help="comma list of CPU backends among torch-eager, torch-channels-last, torch-bf16, ort-fp32, "
                         "ort-int8 (default: torch-eager,ort-fp32,ort-int8)")
    pr.add_argument("--batch-size", type=positive_int, default=8, help="batch size (default: 8)")
    pr.add_argument("--threads", type=positive_int, help="threads (default: all cores, as the bench)")
    pr.add_argument("--reps", type=positive_int, default=40, help="profiled runs per backend (default: 40)")
    pr.add_argument("--peak", help="the matmul peak: a bench.json (its \"peak\") or the probe's JSON (default: "
                                   "none: no share of peak)")
    pr.add_argument("--wait", choices=["spin", "passive"], default="spin",
                    help="idle ORT threads spin or sleep, as the bench's --wait (default: spin)")
    pr.add_argument("--top", type=positive_int, default=10, help="layers in the Markdown table (default: 10)")
    pr.add_argument("--out", help="output folder (default: RUN_DIR)")


def _compare(sub) -> None:
    c = _command(sub, "compare", "regression gate across two sessions: two bench.json files (exit 1 on a regression)",
                 "segvae compare main/bench.json pr/bench.json --max-slowdown 5% --out comparison.md",
                 "Faster / slower / no significant change per (experiment, backend, scenario, batch size), from "
                 "the intervals bench.json carries, plus accuracy pass/fail; prints a Markdown table. The host's "
                 "drift between two sessions is not controlled: `segvae ab` measures both versions in the same "
                 "rounds. Exit 0: no regression, 1: a regression or something that cannot be verified (a backend "
                 "missing from NEW, an unstable row, NEW failing its accuracy gate, a CVAE without a judge), "
                 "2: unreadable input or different machines/settings.")
    c.add_argument("old", metavar="OLD.json", help="the baseline bench.json (e.g. from the main branch)")
    c.add_argument("new", metavar="NEW.json", help="the bench.json to judge (e.g. from the pull request)")
    c.add_argument("--max-slowdown", type=share, default=DEFAULT_MAX_SLOWDOWN, metavar="SHARE",
                   help=f"a row is slower when NEW is worse by more than this and the intervals are disjoint; "
                        f"5%% or 0.05 (default: {100 * DEFAULT_MAX_SLOWDOWN:g}%%)")
    c.add_argument("--max-accuracy-drop", type=nonnegative_float, default=DEFAULT_MAX_ACCURACY_DROP, metavar="DROP",
                   help=f"accuracy fails when it drops by more than this, absolute (default: {DEFAULT_MAX_ACCURACY_DROP})")
    c.add_argument("--allow-missing", action="store_true",
                   help="accept a backend or configuration in OLD that NEW lacks (default: exit 1)")
    c.add_argument("--allow-unstable", action="store_true",
                   help="accept rows whose measurement is not stable on a side (default: exit 1, cannot verify)")
    c.add_argument("--allow-gate-fail", action="store_true",
                   help="accept NEW failing its own accuracy gate against fp32 (default: exit 1)")
    c.add_argument("--allow-no-judge", action="store_true",
                   help="accept a CVAE benched without --judges, gated on output error only (default: exit 1)")
    c.add_argument("--allow-different-machine", action="store_true",
                   help="compare files from different CPUs, core counts, package versions or bench settings "
                        "(default: exit 2 naming the fields)")
    c.add_argument("--out", metavar="FILE.md", help="also write the Markdown to this file (default: print only)")


def _report(sub) -> None:
    r = _command(sub, "report", "rebuild report.html and report.md from saved results",
                 "segvae report runs")
    r.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of runs, e.g. the --out of `segvae run`")
    r.add_argument("--out", help="folder for the report (default: RUNS_DIR)")


def _run(sub) -> None:
    run = _command(sub, "run", "train, judge, export, bench and report in one go",
                   "segvae run --preset cpu --data-root ../shared/data --out runs-cpu",
                   "Run every stage of a preset; each stage runs as the `segvae` command recorded in "
                   "OUT/pipeline.json. Re-running with the same --out reuses finished work.")
    run.add_argument("--preset", default="quick", choices=list(PRESETS),
                     help=f"one of {', '.join(PRESETS)}; presets are listed in docs/pipeline.md (default: quick)")
    run.add_argument("--data-root", help="dataset root (default: the embedded real sample)")
    run.add_argument("--experiments", type=csv, help=f"comma list (default: all six: {','.join(EXPERIMENTS)})")
    run.add_argument("--seeds", type=csv_seeds, help="comma list, e.g. 0,1,2, for UNets and CVAEs (default: the preset's)")
    run.add_argument("--out", default="runs", help="output folder (default: runs)")
    run.add_argument("--log-with", choices=LOG_WITH, default="none",
                     help="tracker for the training runs (default: none)")
    run.add_argument("--retrain", action="store_true",
                     help="train every run and judge again (default: reuse finished runs and judges in --out whose "
                          "settings are unchanged, resume interrupted runs)")
    run.add_argument("--full-epochs", action="store_true",
                     help="keep the preset's UNet epochs even where this machine is too slow for the preset's time "
                          "budget (quick: 11 minutes; default: train the UNets fewer epochs there, and say so)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (each stage's command), what it leaves out on this machine and the "
                          "estimate from a few seconds of calibration here, then stop (default: off)")
    run.add_argument("--launcher", choices=["local", "slurm"], default="local",
                     help="local: every stage here, one after another; slurm: SLURM jobs, the trainings as one job "
                          "array, each later stage after the jobs it reads (docs/cluster.md) (default: local)")
    slurm = run.add_argument_group("--launcher slurm (flags win over --slurm-config)")
    slurm.add_argument("--slurm-config", metavar="FILE.json",
                       help="JSON with any of: partition, account, time, gpus_per_task, cpus_per_task, sbatch_args, "
                            "bench_sbatch_args, poll_seconds (default: none)")
    slurm.add_argument("--partition", help="sbatch --partition of every job (default: the cluster's)")
    slurm.add_argument("--account", help="sbatch --account of every job (default: yours)")
    slurm.add_argument("--time", help="sbatch --time of every job, e.g. 04:00:00 (default: the partition's)")
    slurm.add_argument("--gpus-per-task", type=positive_int,
                       help="GPUs per training and bench job; a training with more than one runs under `accelerate "
                            "launch` (default: none)")
    slurm.add_argument("--cpus-per-task", type=positive_int, help="CPUs per job (default: the cluster's)")
    slurm.add_argument("--sbatch-arg", action="append", metavar="OPTION",
                       help="one more sbatch option for every job, e.g. --sbatch-arg=--qos=high; repeatable "
                            "(default: none)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segvae", formatter_class=FMT,
                                description="Train UNets and conditional VAEs, ship them as ONNX, and prove with "
                                            "numbers that the shipped model is as accurate and faster.",
                                epilog="example:\n  segvae run            # the quick preset on the embedded sample")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors (default: one line)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_download, _train, _judge, _export, _predict, _bench, _ab, _profile, _compare, _report, _run):
        add(sub)
    return p
