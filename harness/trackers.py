"""Experiment trackers for training (W&B offline without an account, TensorBoard): never fatal."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from harness.config import ExperimentConfig
from harness.errors import UserError
from harness.io import atomic_write_json
from harness.run_folder import WANDB_DIR, WANDB_RUN_FILE


def check_tracker(log_with: str) -> None:
    """Fail before any work when the chosen tracker's package is missing (wandb is checked by the CLI)."""
    if log_with == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise UserError("--log-with tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or use --log-with wandb / none)")


def init_trackers(accelerator, cfg: ExperimentConfig, out_dir: Path, log_with: str) -> str:
    """Start the tracker; W&B runs offline unless logged in (`wandb login` or WANDB_API_KEY) and never
    blocks; its run id goes to OUT/wandb/wandb_run.json so an export can name it. Returns what is active."""
    if log_with == "none":
        return "none"
    check_tracker(log_with)
    init_kwargs = {}
    if log_with == "wandb":
        from harness.wandb_log import default_mode

        default_mode()
        wandb_dir = out_dir / WANDB_DIR
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
    if log_with == "wandb" and accelerator.is_main_process:
        _record_wandb_run(accelerator, out_dir, mode)
    accelerator.print(f"logging to {log_with}{' (' + mode + ')' if mode else ''}")
    return log_with


def _record_wandb_run(accelerator, out_dir: Path, mode: str) -> None:
    """OUT/wandb/wandb_run.json: the run id that `segvae export --log-with wandb` names as its source."""
    try:
        run = accelerator.get_tracker("wandb", unwrap=True)
        path = run.path if isinstance(run.path, str) else "/".join(map(str, run.path))
        atomic_write_json(out_dir / WANDB_DIR / WANDB_RUN_FILE, {
            "id": run.id, "project": run.project, "name": run.name, "mode": mode,
            "path": path if mode in ("online", "run") else None})
    except Exception as e:  # noqa: BLE001 - the record is a convenience for `segvae export --log-with`
        accelerator.print(f"warning: could not record the W&B run id: {e}")


def log_images(accelerator, active: str, images: dict[str, Path], step: int):
    if active != "wandb" or not accelerator.is_main_process:
        return
    try:
        import wandb

        tracker = accelerator.get_tracker("wandb", unwrap=True)
        tracker.log({k: wandb.Image(str(v)) for k, v in images.items()}, step=step)
    except Exception as e:
        accelerator.print(f"warning: could not log images to wandb: {e}")
