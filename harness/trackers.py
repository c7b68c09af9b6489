"""Experiment trackers for training (W&B offline without an account, TensorBoard): never fatal."""
from __future__ import annotations

import os
from pathlib import Path

from harness.config import ExperimentConfig


def init_trackers(accelerator, cfg: ExperimentConfig, out_dir: Path, log_with: str) -> str:
    """Start the tracker; W&B runs offline without an API key and never blocks. Returns what is active."""
    if log_with == "none":
        return "none"
    init_kwargs = {}
    if log_with == "wandb":
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb_dir = out_dir / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"wandb": {"dir": str(wandb_dir), "name": out_dir.name,
                                 "settings": {"init_timeout": 60}}}
    try:
        accelerator.init_trackers("segvae-bench", config=cfg.to_dict(), init_kwargs=init_kwargs)
    except Exception as e:  # a tracker must never take the training run down
        accelerator.print(f"warning: could not start the {log_with} tracker ({type(e).__name__}: {e}); "
                          f"training continues without it")
        accelerator.trackers = []
        return "none"
    mode = os.environ.get("WANDB_MODE", "online") if log_with == "wandb" else ""
    accelerator.print(f"logging to {log_with}{' (' + mode + ')' if mode else ''}")
    return log_with


def log_images(accelerator, active: str, images: dict[str, Path], step: int):
    if active != "wandb" or not accelerator.is_main_process:
        return
    try:
        import wandb

        tracker = accelerator.get_tracker("wandb", unwrap=True)
        tracker.log({k: wandb.Image(str(v)) for k, v in images.items()}, step=step)
    except Exception as e:
        accelerator.print(f"warning: could not log images to wandb: {e}")
