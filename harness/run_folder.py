"""The run folder and the output folder of `segvae run`, the contract between stages: every file
name (every other module imports them from here), how each is read and written, and what a run
records about itself.

    RUN/config.json            the resolved ExperimentConfig (all that rebuilds the model)
    RUN/run.json               data root, data fingerprint and provenance, written at training start
    RUN/model.safetensors      final weights (loading a run never unpickles anything)
    RUN/best.safetensors       the best epoch's weights while training runs
    RUN/metrics.json           written once by `segvae train`
    RUN/labelswap.json         written once by `segvae judge ... --runs RUN` (CVAEs)
    RUN/samples/               test overlays or the 5x5 label-swap grid
    RUN/checkpoints/last/      Accelerate state + trainer_state.json for --resume
    RUN/onnx/                  `segvae export`: model.onnx or swap.onnx (+ .int8/.fp16), export.json

    OUT/<experiment>[-s<seed>]/   one run folder per experiment and seed (`segvae run`)
    OUT/configs/<run>.json        the resolved config each training started from
    OUT/judges/<dataset>/         judge.json + judge.safetensors (harness.judge)
    OUT/bench.json, OUT/pipeline.json, OUT/report.html, OUT/report.md

Later stages default to the data the run recorded (`data_root_for`), so `segvae export RUN`
calibrates on what training used, and a run that recorded nothing is an error, not a silent
fallback to the embedded sample. Importing this module imports no torch (ORT bench workers
read the ONNX names here).
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from harness.config import ExperimentConfig
from harness.errors import UserError
from harness.hardware import machine
from harness.io import atomic_write, atomic_write_json, read_json

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------------------- RUN/
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
LABELSWAP_FILE = "labelswap.json"
BEST_FILE = "best.safetensors"
BEST_SCRATCH_DIR = "_best"             # where the best weights are written before the rename to BEST_FILE
SAMPLES_DIR = "samples"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last"               # RUN/checkpoints/last: what --resume loads
PREVIOUS_CHECKPOINT = "_previous"      # the one before, kept until the new one is in place
INCOMING_CHECKPOINT = "_incoming"      # the one being written
STATE_FILE = "trainer_state.json"      # inside a checkpoint: epoch, step, history
ONNX_DIR = "onnx"
EXPORT_FILE = "export.json"
EMBEDDED = "embedded"  # run.json's data_root for the package's embedded sample
# the graph the bench and `segvae predict` run, per task (exports.onnx_export.graph_specs writes them; a
# CVAE's decoder.onnx ships beside swap.onnx); other precisions insert theirs: model.int8.onnx
GRAPH_FILES = {"segmentation": "model.onnx", "cvae": "swap.onnx", "decoder": "decoder.onnx"}
ONNX_PRECISIONS = ("fp32", "int8", "fp16")

# ---------------------------------------------------------------------------- OUT/ of `segvae run`
CONFIGS_DIR = "configs"
JUDGES_DIR = "judges"
JUDGE_FILE = "judge.json"                 # OUT/judges/<dataset>/judge.json: settings, fitness
JUDGE_WEIGHTS_FILE = "judge.safetensors"
BENCH_FILE = "bench.json"
PEAK_FILE = "peak.json"                   # the bench's matmul probe, measured once per `segvae run`
FIT_FILE = "fit.json"                     # the UNet epochs `segvae run` fitted to this machine's time budget
WANDB_DIR = "wandb"                       # RUN/wandb/ (training's tracker), RUN/onnx/wandb/ (the export's)
WANDB_RUN_FILE = "wandb_run.json"         # RUN/wandb/wandb_run.json: the W&B run training logged to
WANDB_ARTIFACT_FILE = "wandb_artifact.json"  # RUN/onnx/: which W&B artifact holds these files
PIPELINE_FILE = "pipeline.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
DEFAULT_OUT = "runs"                      # where commands write when --out is not given


def onnx_name(graph_file: str, precision: str) -> str:
    """model.onnx, int8 -> model.int8.onnx (fp32: the name itself)."""
    return graph_file if precision == "fp32" else graph_file.replace(".onnx", f".{precision}.onnx")


def onnx_path(run_dir: str | os.PathLike, task: str, precision: str) -> Path:
    """RUN/onnx/<the task's graph in this precision>."""
    return Path(run_dir) / ONNX_DIR / onnx_name(GRAPH_FILES[task], precision)


def run_dir_name(name: str, seed: int, seeds: tuple[int, ...]) -> str:
    """OUT/<experiment>, or OUT/<experiment>-s<seed> when the experiment runs several seeds."""
    return name if len(seeds) == 1 else f"{name}-s{seed}"


def judge_dir(dataset: str, out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """OUT/judges/<dataset>: where a dataset's judge lives."""
    return Path(out) / JUDGES_DIR / dataset


# ---------------------------------------------------------------------------- config and weights
def save_config(run_dir: str | os.PathLike, cfg: ExperimentConfig, extra: dict | None = None) -> Path:
    return atomic_write_json(Path(run_dir) / CONFIG_FILE, {**cfg.to_dict(), **(extra or {})})


def save_weights(run_dir: str | os.PathLike, model: torch.nn.Module, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write(Path(run_dir) / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=meta))


def load_config(run_dir: str | os.PathLike) -> ExperimentConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    return ExperimentConfig.from_dict(read_json(run_dir / CONFIG_FILE, "run config"), str(run_dir / CONFIG_FILE))


def load_weights_into(model: torch.nn.Module, path: str | os.PathLike, experiment: str = "?") -> torch.nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights not found: {path} (expected a safetensors file written by `segvae train`)")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a safetensors weights file ({e}); pickled checkpoints are never loaded") from None
    own = model.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    wrong = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}, "
                  f"shape mismatch {sorted(wrong)[:3]}")
        raise UserError(f"{path} does not fit experiment {experiment!r} (is it from another experiment?): {detail}")
    model.load_state_dict(state)
    return model


def load_run(run_dir: str | os.PathLike) -> tuple[ExperimentConfig, torch.nn.Module]:
    """Rebuild a trained model from a run directory (config.json + model.safetensors), in eval mode."""
    from models import build_model

    cfg = load_config(run_dir)
    model = build_model(cfg.task, cfg.model)
    load_weights_into(model, Path(run_dir) / WEIGHTS_FILE, cfg.name)
    return cfg, model.eval()


# ---------------------------------------------------------------------------- what a run records
def record_run(out_dir: str | os.PathLike, cfg: ExperimentConfig, data_root, argv: list[str] | None = None) -> Path:
    """Write RUN/run.json at training start: the data (root and fingerprint) and provenance.

    Why: export, bench and judge default to this data root, so a command re-run as printed
    uses the data training used; the fingerprint tells when the files under that root changed.
    """
    from harness.data import data_fingerprint, resolve_data_root

    root = resolve_data_root(data_root)
    return atomic_write_json(Path(out_dir) / RUN_FILE, {
        "experiment": cfg.name, "config_hash": cfg.hash(),
        "data_root": EMBEDDED if data_root is None else str(Path(data_root).expanduser().absolute()),
        "data_fingerprint": data_fingerprint(cfg.dataset, root),
        "provenance": provenance(sys.argv if argv is None else argv),
        "machine": machine().as_dict(),
        "created_unix": time.time(),
    })


def read_run_record(run_dir: str | os.PathLike) -> dict | None:
    """RUN/run.json, or None for a run trained before runs recorded themselves."""
    path = Path(run_dir) / RUN_FILE
    return read_json(path, "run record") if path.is_file() else None


def recorded_data_root(run_dir: str | os.PathLike) -> Path | None:
    """The data root the run trained on (the embedded sample's path for "embedded"), None if unrecorded."""
    from harness.data import PACKAGE_SAMPLE_ROOT

    rec = read_run_record(run_dir)
    if rec is None or not rec.get("data_root"):
        return None
    return PACKAGE_SAMPLE_ROOT if rec["data_root"] == EMBEDDED else Path(rec["data_root"])


def data_root_for(run_dir: str | os.PathLike, given=None, stage: str = "this stage") -> Path:
    """The data root a later stage uses: the one given, else the one the run recorded.

    A run that recorded none (trained before run.json existed) is an error naming the flag, never
    a silent fallback to the embedded sample or to random inputs.
    """
    if given is not None:
        return Path(given)
    recorded = recorded_data_root(run_dir)
    if recorded is None:
        raise UserError(f"{Path(run_dir) / RUN_FILE} not found or without data_root: {stage} needs the run's data; "
                        "pass --data-root (the folder the run was trained on)")
    if not recorded.is_dir():
        raise UserError(f"the data root recorded in {Path(run_dir) / RUN_FILE} is gone: {recorded}; "
                        "pass --data-root")
    return recorded


# ---------------------------------------------------------------------------- provenance
def git_state(cwd: str | os.PathLike | None = None) -> dict:
    """{"commit", "dirty"} of the git checkout holding this package (None outside a checkout).

    Asks git from the package's own folder rather than guessing the repository root from a
    path depth, so an installed copy (site-packages) reports no commit instead of a wrong one.
    """
    where = str(cwd or Path(__file__).resolve().parent)

    def git(*args):
        try:
            r = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict:
    import numpy
    import torch

    import harness

    return {"segvae": harness.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__}


def provenance(argv: list[str]) -> dict:
    argv = [str(a) for a in argv]
    return {"git": git_state(), "versions": versions(), "argv": argv, "command": shlex.join(argv)}
