"""The training loop: plain PyTorch, wrapped by Accelerate (prepare, backward, gather_for_metrics,
save_state/load_state, trackers). Works in one process or under `accelerate launch`.

Outputs under out_dir: config.json, model.safetensors (best validation epoch), metrics.json,
samples/ (test overlays or the 5x5 label-swap grid), checkpoints/last (Accelerate state for
--resume) and trainer_state.json. Every file is written atomically.
"""
from __future__ import annotations

import gc
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.checkpoint import (METRICS_FILE, WEIGHTS_FILE, load_config, load_weights_into, save_config,
                                save_weights)
from harness.config import ExperimentConfig
from harness.errors import UserError
from harness.io import atomic_write_json, read_json
from harness.metrics import cvae_metrics, cvae_stats, seg_metrics, seg_stats
from models import build_model
from models.losses import SEGMENTATION_LOSSES, elbo_terms

STATE_FILE = "trainer_state.json"
BEST_FILE = "best.safetensors"
CHECKPOINT_DIR = "checkpoints"


# ----------------------------------------------------------------------------- data plumbing
class EpochShuffle(Sampler):
    """Shuffle from (seed, epoch) alone, so a resumed epoch sees the same order on every rank."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


class Indexed(Dataset):
    """Adds the sample index, so per-sample evaluation noise does not depend on how ranks split data."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return (*self.ds[i], i)


def make_loaders(cfg: ExperimentConfig, splits: dict, eval_batch_size: int | None = None):
    train_ds = splits["train"]
    sampler = EpochShuffle(len(train_ds), cfg.seed)
    common = {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0}
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=len(train_ds) > cfg.batch_size,
                       **common)
    ebs = eval_batch_size or max(cfg.batch_size, 32)
    evals = {k: DataLoader(Indexed(splits[k]), batch_size=ebs, shuffle=False, **common) for k in ("val", "test")}
    return train, sampler, evals


# ----------------------------------------------------------------------------- steps
def dequantize(x: torch.Tensor, noise: bool) -> torch.Tensor:
    """8-bit images in [0,1] -> continuous data (x*255 + u)/256; u ~ U(0,1) in training, 0.5 in eval."""
    u = torch.rand_like(x) if noise else torch.full_like(x, 0.5)
    return (x * 255 + u) / 256


def to_layout(cfg: ExperimentConfig, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last and x.dim() == 4 else x


def train_loss(cfg: ExperimentConfig, model, batch, progress: float = 1e9) -> torch.Tensor:
    """progress = epochs done (fractional); only the CVAE's KL warm-up reads it."""
    if cfg.task == "segmentation":
        image, mask = to_layout(cfg, batch[0]), batch[1]
        return SEGMENTATION_LOSSES[cfg.loss](model(image), mask)
    x, y = to_layout(cfg, batch[0]), batch[1]
    x = dequantize(x, noise=True)
    out = model(x, y)
    warm = min(1.0, progress / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs > 0 else 1.0
    return elbo_terms(x, out, _unwrap(model).log_scale, cfg.kl_weight * warm, getattr(cfg, "free_bits", 0.0))["loss"]


def _unwrap(model):
    return getattr(model, "module", model)


def eval_noise(n_total: int, latent_dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n_total, latent_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def evaluate(cfg: ExperimentConfig, model, loader, accelerator=None) -> dict[str, float]:
    """Exact metrics over a split: per-sample stats gathered (padding dropped), reduced once."""
    model.eval()
    stats, losses = [], []
    eps_table = None
    if cfg.task == "cvae":
        eps_table = eval_noise(len(loader.dataset), cfg.model.get("latent_dim", 16))
    for batch in loader:
        x, y, idx = batch
        x = to_layout(cfg, x)
        if cfg.task == "segmentation":
            logits = model(x)
            s = seg_stats(logits, y)
            per_loss = _per_sample_seg_loss(cfg, logits, y)
        else:
            xd = dequantize(x, noise=False)
            out = model(xd, y, eps_table[idx.cpu()].to(x.device))
            terms = elbo_terms(xd, out, _unwrap(model).log_scale, 1.0)
            s = cvae_stats(terms)
            per_loss = -terms["elbo"].double()
        if accelerator is not None:
            s, per_loss = accelerator.gather_for_metrics((s, per_loss))
        stats.append(s.cpu())
        losses.append(per_loss.cpu())
    stats, losses = torch.cat(stats), torch.cat(losses)
    if cfg.task == "segmentation":
        m = seg_metrics(stats)
    else:
        dims = int(cfg.model["in_channels"]) * int(cfg.model["image_size"]) ** 2
        m = cvae_metrics(stats, dims)
    m["loss"] = float(losses.mean())
    return m


def _per_sample_seg_loss(cfg, logits, target) -> torch.Tensor:
    return torch.stack([SEGMENTATION_LOSSES[cfg.loss](logits[i:i + 1], target[i:i + 1])
                        for i in range(len(logits))]).double()


def score_of(cfg: ExperimentConfig, metrics: dict) -> float:
    """Higher is better: validation Dice for UNets, ELBO for CVAEs."""
    return metrics["dice"] if cfg.task == "segmentation" else metrics["elbo"]


# ----------------------------------------------------------------------------- trackers
def _init_trackers(accelerator, cfg: ExperimentConfig, out_dir: Path, log_with: str) -> str:
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


def _log_images(accelerator, active: str, images: dict[str, Path], step: int):
    if active != "wandb" or not accelerator.is_main_process:
        return
    try:
        import wandb

        tracker = accelerator.get_tracker("wandb", unwrap=True)
        tracker.log({k: wandb.Image(str(v)) for k, v in images.items()}, step=step)
    except Exception as e:
        accelerator.print(f"warning: could not log images to wandb: {e}")


# ----------------------------------------------------------------------------- main entry
def resolve_precision(requested: str) -> str:
    """'auto' -> bf16 where the hardware computes it natively (CUDA bf16; AVX512-BF16 or AMX CPUs),
    fp16 on older GPUs, else fp32 ('no'). Why: bf16 made a UNet step 1.76x faster on an AVX512-BF16
    CPU (#7), so the UNet recipe fits its ~10-minute budget only with it; CPUs without it emulate
    bf16 more slowly than fp32."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_has_native_bf16() -> bool:
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def train(cfg: ExperimentConfig, out_dir: str | os.PathLike, data_root=None, download: bool = False,
          log_with: str = "none", resume: bool = False) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from harness.data import build_splits

    cfg.validate()
    out_dir = Path(out_dir)
    mixed = resolve_precision(cfg.mixed_precision)
    if mixed == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU (fp16 matmuls on this CPU are unusable); "
                        "use bf16 on the CPU")
    try:
        accelerator = Accelerator(mixed_precision=mixed, log_with=None if log_with == "none" else log_with,
                                  project_dir=str(out_dir), cpu=not torch.cuda.is_available(),
                                  dynamo_backend="inductor" if cfg.compile else "no")
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        # Accelerate keeps one mixed precision per process; say so instead of its "restart your runtime".
        asked = "" if cfg.mixed_precision == mixed else f", resolved from {cfg.mixed_precision!r}"
        raise UserError(f"this Python process already trained with another mixed precision, and Accelerate "
                        f"allows one per process: run this training (mixed precision {mixed!r}{asked}) in a "
                        f"new process, as each `segvae train` does") from None
    _check_resume(cfg, out_dir, resume)
    set_seed(cfg.seed)

    splits = build_splits(cfg, data_root, download=download)
    train_loader, sampler, eval_loaders = make_loaders(cfg, splits)
    model = build_model(cfg.task, cfg.model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(cfg, model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loaders["val"], eval_loaders["test"])
    steps_per_epoch = len(train_loader)
    scheduler = _make_scheduler(cfg, optimizer, steps_per_epoch)

    if accelerator.is_main_process:
        save_config(out_dir, cfg)
    active = _init_trackers(accelerator, cfg, out_dir, log_with)
    state = {"epoch": 0, "step": 0, "history": [], "best_score": -math.inf, "best_epoch": 0,
             "train_seconds": 0.0, "samples_seen": 0, "bad_epochs": 0}
    ckpt_dir = out_dir / CHECKPOINT_DIR / "last"
    found = _checkpoint_to_resume(out_dir) if resume else None
    if found is not None:
        _verify_checkpoint(found)
        accelerator.load_state(str(found), load_kwargs={"weights_only": True})
        state = read_json(found / STATE_FILE, "trainer state")
        _fast_forward(scheduler, state["step"])
        accelerator.print(f"resumed from {found} at epoch {state['epoch']}")
    elif resume:
        accelerator.print(f"no checkpoint in {out_dir / CHECKPOINT_DIR}: starting from scratch")

    accelerator.print(f"{cfg.name}: {len(splits['train'])} train / {len(splits['val'])} val / "
                      f"{len(splits['test'])} test samples, {accelerator.num_processes} process(es), "
                      f"mixed precision {mixed}, {cfg.epochs} epochs of {steps_per_epoch} steps")
    for epoch in range(state["epoch"], cfg.epochs):
        if cfg.early_stop_patience and state["bad_epochs"] >= cfg.early_stop_patience:
            accelerator.print(f"early stop: no validation improvement for {state['bad_epochs']} epochs")
            break
        # The prepared loader re-sets its sampler's epoch from its own counter, which restarts at 0 in
        # a resumed process: set both, or a resumed epoch sees another order.
        sampler.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        total, count = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not accelerator.is_local_main_process, mininterval=2.0)
        data_wait, t_ready = 0.0, time.perf_counter()
        for i, batch in enumerate(bar):
            data_wait += time.perf_counter() - t_ready  # time the step waited for its batch
            loss = train_loss(cfg, model, batch, epoch + i / steps_per_epoch)
            _stop_if_not_finite(accelerator, loss, state["step"], epoch, ckpt_dir)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            n = len(batch[0])
            total += loss.detach().double().cpu() * n
            count += n
            if state["step"] % 10 == 0:
                accelerator.log({"train/loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}, step=state["step"])
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
            t_ready = time.perf_counter()
        epoch_seconds = time.perf_counter() - t0
        seen = int(accelerator.reduce(torch.tensor(count), reduction="sum"))
        train_loss_mean = float(accelerator.reduce(total.float(), reduction="sum")) / max(seen, 1)
        val = evaluate(cfg, model, val_loader, accelerator)
        improved = score_of(cfg, val) > state["best_score"]
        if improved:
            state.update(best_score=score_of(cfg, val), best_epoch=epoch + 1, bad_epochs=0)
            if accelerator.is_main_process:
                save_weights(out_dir / "_best", accelerator.unwrap_model(model, keep_torch_compile=False))
                os.replace(out_dir / "_best" / WEIGHTS_FILE, out_dir / BEST_FILE)
        else:
            state["bad_epochs"] += 1
        state["train_seconds"] += epoch_seconds
        state["samples_seen"] += seen
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss_mean, "val": val,
                                 "seconds": epoch_seconds, "data_wait_seconds": data_wait})
        state["epoch"] = epoch + 1
        accelerator.log({"epoch": epoch + 1, "train/epoch_loss": train_loss_mean,
                         **{f"val/{k}": v for k, v in val.items()}}, step=state["step"])
        accelerator.print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss_mean:.4f}, "
                          + ", ".join(f"val {k} {v:.4f}" for k, v in val.items() if k != "count")
                          + f", {epoch_seconds:.1f}s{' *' if improved else ''}")
        _save_checkpoint(accelerator, ckpt_dir, out_dir, state)

    # final: best weights, test metrics, samples
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if (out_dir / BEST_FILE).is_file():
        accelerator.wait_for_everyone()
        load_weights_into(unwrapped, out_dir / BEST_FILE, cfg.name)
    val = evaluate(cfg, model, val_loader, accelerator)
    test = evaluate(cfg, model, test_loader, accelerator)
    metrics = {
        "experiment": cfg.name, "task": cfg.task, "seed": cfg.seed,
        "num_processes": accelerator.num_processes, "mixed_precision": mixed,
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
        "train_seconds": state["train_seconds"],
        "seconds_per_epoch": state["train_seconds"] / max(len(state["history"]), 1),
        "train_samples_per_s": state["samples_seen"] / max(state["train_seconds"], 1e-9),
        "data_wait_fraction": sum(h.get("data_wait_seconds", 0.0) for h in state["history"])
        / max(state["train_seconds"], 1e-9),
        "val": val, "test": test, "history": state["history"],
    }
    if accelerator.is_main_process:
        save_weights(out_dir, unwrapped, {"experiment": cfg.name, "config_hash": cfg.hash()})
        from harness.samples import write_samples

        samples, extra = write_samples(cfg, unwrapped, splits["test"], out_dir)
        metrics.update(samples=samples, **extra)
        atomic_write_json(out_dir / METRICS_FILE, metrics)
        _log_images(accelerator, active, {k: out_dir / v for k, v in samples.items() if isinstance(v, str)},
                    state["step"])
    accelerator.log({**{f"test/{k}": v for k, v in test.items()}}, step=state["step"])
    accelerator.wait_for_everyone()
    # Release DDP objects before end_training: gloo aborts at exit ~40% of the time otherwise.
    del model, optimizer, train_loader, val_loader, test_loader, scheduler
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    if accelerator.is_main_process:
        (out_dir / "_best").exists() and shutil.rmtree(out_dir / "_best", ignore_errors=True)
        print(f"{cfg.name}: test " + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "count"))
        print(f"outputs in {out_dir.resolve()}")
        if cfg.task == "cvae":  # the last line says whether the label swap follows its source (#16)
            from harness.collapse import collapse_line
            print(collapse_line(cfg.name, metrics.get("collapse")))
    return metrics


def param_groups(cfg: ExperimentConfig, model) -> list[dict]:
    """The CVAE's likelihood log-scale in its own group (lr x log_scale_lr_mult, no weight decay)."""
    special = [p for n, p in model.named_parameters() if n == "log_scale"]
    rest = [p for n, p in model.named_parameters() if n != "log_scale"]
    groups = [{"params": rest, "lr": cfg.lr}]
    if special:
        groups.append({"params": special, "lr": cfg.lr * cfg.log_scale_lr_mult, "weight_decay": 0.0})
    return groups


def _make_scheduler(cfg: ExperimentConfig, optimizer, steps_per_epoch: int):
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.schedule == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total + 1,
                                                   pct_start=0.15)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _stop_if_not_finite(accelerator, loss, step, epoch, ckpt_dir):
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.gather(finite).min()
    if not bool(finite):
        kept = f"; the last good checkpoint is kept at {ckpt_dir}" if ckpt_dir.is_dir() else ""
        raise UserError(f"loss became {float(loss.detach())} at step {step + 1} (epoch {epoch + 1}){kept}; "
                        f"try a lower --lr")


def _save_checkpoint(accelerator, ckpt_dir: Path, out_dir: Path, state: dict):
    """Accelerate state into a fresh folder, then swapped in: a kill mid-write keeps the previous one."""
    tmp = ckpt_dir.parent / "_incoming"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)  # state travels with its checkpoint
        old = ckpt_dir.parent / "_previous"
        if old.exists():
            shutil.rmtree(old)
        if ckpt_dir.exists():
            os.replace(ckpt_dir, old)
        os.replace(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _check_resume(cfg: ExperimentConfig, out_dir: Path, resume: bool):
    if not resume:
        return
    if not (out_dir / "config.json").is_file():
        return  # nothing to resume: start fresh
    saved = load_config(out_dir)
    if saved.name != cfg.name or saved.model != cfg.model:
        raise UserError(f"{out_dir} holds a run of {saved.name!r} with model {saved.model}; "
                        f"cannot resume {cfg.name!r} with model {cfg.model} from it")


def _verify_checkpoint(ckpt: Path):
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


def _fast_forward(scheduler, steps: int):
    """Rebuild the LR schedule by stepping it, instead of unpickling a saved scheduler object."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            scheduler.step()


def _checkpoint_to_resume(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: `last`, or `_previous` if a kill fell between the two renames."""
    for name in ("last", "_previous"):
        d = out_dir / CHECKPOINT_DIR / name
        if (d / STATE_FILE).is_file():
            return d
    return None


def evaluate_run(run_dir, split: str = "val", data_root=None) -> dict[str, float]:
    """Evaluate a saved run in this process (no Accelerate): the reference for DDP exactness."""
    from harness.checkpoint import load_run
    from harness.data import build_splits

    cfg, model = load_run(run_dir)
    _, _, loaders = make_loaders(cfg, build_splits(cfg, data_root))
    return evaluate(cfg, model, loaders[split])
