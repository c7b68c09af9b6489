"""Final weights as safetensors beside config.json: loading a run never unpickles anything."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.config import ExperimentConfig
from harness.errors import UserError
from harness.io import atomic_write, atomic_write_json, read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


def save_config(run_dir: str | os.PathLike, cfg: ExperimentConfig, extra: dict | None = None) -> Path:
    return atomic_write_json(Path(run_dir) / CONFIG_FILE, {**cfg.to_dict(), **(extra or {})})


def save_weights(run_dir: str | os.PathLike, model: torch.nn.Module, metadata: dict | None = None) -> Path:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write(Path(run_dir) / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=meta))


def load_config(run_dir: str | os.PathLike) -> ExperimentConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    return ExperimentConfig.from_dict(read_json(run_dir / CONFIG_FILE, "run config"), str(run_dir / CONFIG_FILE))


def load_weights_into(model: torch.nn.Module, path: str | os.PathLike, experiment: str = "?") -> torch.nn.Module:
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
