"""Training checkpoints (Accelerate state under RUN/checkpoints/) for --resume: written by swapping in a
complete folder, found again after a kill, and verified to hold plain tensors before anything is loaded.
(The final run format, config.json + model.safetensors, is harness/run_folder.py.)"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.config import ExperimentConfig
from harness.errors import UserError
from harness.io import atomic_write_json
from harness.run_folder import (CHECKPOINT_DIR, CONFIG_FILE, INCOMING_CHECKPOINT, LAST_CHECKPOINT, PREVIOUS_CHECKPOINT,
                                STATE_FILE, load_config)


def save_checkpoint(accelerator, ckpt_dir: Path, out_dir: Path, state: dict):
    """Accelerate state into a fresh folder, then swapped in: a kill mid-write keeps the previous one."""
    tmp = ckpt_dir.parent / INCOMING_CHECKPOINT
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)  # state travels with its checkpoint
        old = ckpt_dir.parent / PREVIOUS_CHECKPOINT
        if old.exists():
            shutil.rmtree(old)
        if ckpt_dir.exists():
            os.replace(ckpt_dir, old)
        os.replace(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def check_resume(cfg: ExperimentConfig, out_dir: Path, resume: bool):
    if not resume:
        return
    if not (out_dir / CONFIG_FILE).is_file():
        return  # nothing to resume: start fresh
    saved = load_config(out_dir)
    if saved.name != cfg.name or saved.model != cfg.model:
        raise UserError(f"{out_dir} holds a run of {saved.name!r} with model {saved.model}; "
                        f"cannot resume {cfg.name!r} with model {cfg.model} from it")


def verify_checkpoint(ckpt: Path):
    """Load every pickle-format file of an Accelerate checkpoint with weights_only=True first.

    Accelerate itself swallows a failing random-state load; a file that is not plain tensors and
    numbers (a planted pickle) must stop the resume with its name instead.
    """
    from accelerate.utils.other import load

    from safetensors import safe_open

    for f in sorted(ckpt.iterdir()):
        if f.suffix in (".bin", ".pkl", ".pt", ".pth", ".safetensors"):
            try:
                if f.suffix == ".safetensors":
                    with safe_open(str(f), framework="pt"):
                        pass
                else:
                    load(str(f), map_location="cpu", weights_only=True)
            except Exception as e:
                raise UserError(f"refusing checkpoint file {f}: it is not a plain weights/state file "
                                f"({type(e).__name__}); pickled code is never executed") from None


def fast_forward(scheduler, steps: int):
    """Rebuild the LR schedule by stepping it, instead of unpickling a saved scheduler object."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            scheduler.step()


def checkpoint_to_resume(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: `last`, or `_previous` if a kill fell between the two renames."""
    for name in (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT):
        d = out_dir / CHECKPOINT_DIR / name
        if (d / STATE_FILE).is_file():
            return d
    return None

