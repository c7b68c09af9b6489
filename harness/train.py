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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.collapse import collapse_line
from harness.config import ExperimentConfig
from harness.data import build_splits
from harness.errors import UserError
from harness.hardware import cpu_has_native_bf16
from harness.io import atomic_write_json, read_json
from harness.metrics import cvae_metrics, cvae_stats, seg_metrics, seg_stats
from harness.multinode import check_shared_out_dir
from harness.run_folder import (BEST_FILE, BEST_SCRATCH_DIR, CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE, STATE_FILE,
                                WEIGHTS_FILE, load_weights_into, record_run, save_config, save_weights)
from harness.samples import write_samples
from harness.trackers import check_tracker, init_trackers, log_images
from harness.train_checkpoints import (check_resume, checkpoint_to_resume, fast_forward, save_checkpoint,
                                       verify_checkpoint)
from models import build_model
from models.losses import SEGMENTATION_LOSSES, elbo_terms

LOG_EVERY = 10  # steps between the loss readings that logging needs (each one waits for the device)


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
    # pinned host memory on GPU machines: the copies to the device can then overlap compute (non_blocking)
    common = {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0,
              "pin_memory": torch.cuda.is_available()}
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
    return elbo_terms(x, out, _unwrap(model).log_scale, cfg.kl_weight * warm, cfg.free_bits)["loss"]


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
            eps_table = eps_table.to(x.device)  # once: the table then lives where the batches are
            xd = dequantize(x, noise=False)
            out = model(xd, y, eps_table[idx.to(x.device)])
            terms = elbo_terms(xd, out, _unwrap(model).log_scale, 1.0)
            s = cvae_stats(terms)
            per_loss = -terms["elbo"].double()
        if accelerator is not None:  # on accelerator.device (model outputs): NCCL gathers nothing else
            s, per_loss = accelerator.gather_for_metrics((s, per_loss))
        stats.append(s)
        losses.append(per_loss)
    stats, losses = torch.cat(stats).cpu(), torch.cat(losses).cpu()  # one copy per split, not per batch
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


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch; each checkpoint holds it (trainer_state.json), so
    --resume continues with the same step count, best score and history."""
    epoch: int = 0                 # epochs done
    step: int = 0                  # optimizer steps done (the LR schedule is fast-forwarded to it)
    history: list = field(default_factory=list)   # one row per epoch: train loss, val metrics, seconds
    best_score: float = -math.inf  # score_of(val) of the best epoch so far
    best_epoch: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    bad_epochs: int = 0            # epochs since the best one (early stopping)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def train(cfg: ExperimentConfig, out_dir: str | os.PathLike, data_root=None, download: bool = False,
          log_with: str = "none", resume: bool = False) -> dict:
    """Train cfg into out_dir (see the module docstring), top to bottom: setup, the epoch loop
    (steps, then validation, best weights and a checkpoint per epoch), the final figures."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    cfg.validate()
    check_tracker(log_with)  # a missing tracker package fails before data loading
    out_dir = Path(out_dir)
    mixed = resolve_precision(cfg.mixed_precision)
    accelerator = _make_accelerator(cfg, mixed, out_dir, log_with)
    check_resume(cfg, out_dir, resume)
    check_shared_out_dir(accelerator, out_dir)
    set_seed(cfg.seed)

    # data, model, optimizer, schedule
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
        record_run(out_dir, cfg, data_root, argv=None)  # RUN/run.json: data root, fingerprint, provenance
    active = init_trackers(accelerator, cfg, out_dir, log_with)
    ckpt_dir = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    state = TrainState()
    found = checkpoint_to_resume(out_dir) if resume else None
    if found is not None:
        verify_checkpoint(found)
        accelerator.load_state(str(found), load_kwargs={"weights_only": True})
        state = TrainState.from_dict(read_json(found / STATE_FILE, "trainer state"))
        fast_forward(scheduler, state.step)
        accelerator.print(f"resumed from {found} at epoch {state.epoch}")
    elif resume:
        accelerator.print(f"no checkpoint in {out_dir / CHECKPOINT_DIR}: starting from scratch")

    accelerator.print(f"{cfg.name}: {len(splits['train'])} train / {len(splits['val'])} val / "
                      f"{len(splits['test'])} test samples, {accelerator.num_processes} process(es) on "
                      f"{accelerator.device.type}, mixed precision {mixed}, {cfg.epochs} epochs of "
                      f"{steps_per_epoch} steps")
    device = accelerator.device
    for epoch in range(state.epoch, cfg.epochs):
        if cfg.early_stop_patience and state.bad_epochs >= cfg.early_stop_patience:
            accelerator.print(f"early stop: no validation improvement for {state.bad_epochs} epochs")
            break
        # The prepared loader re-sets its sampler's epoch from its own counter, which restarts at 0 in
        # a resumed process: set both, or a resumed epoch sees another order.
        sampler.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        model.train()
        # The loss sum, the sample count and the first non-finite step stay on the device; the host
        # reads them every LOG_EVERY steps and at the end of the epoch.
        t0 = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
        count = 0  # known on the host: no device op needed
        watch = FiniteWatch(device)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not accelerator.is_local_main_process, mininterval=2.0)
        data_wait, t_ready = 0.0, time.perf_counter()
        for i, batch in enumerate(bar):
            data_wait += time.perf_counter() - t_ready  # time the step waited for its batch
            loss = train_loss(cfg, model, batch, epoch + i / steps_per_epoch)
            watch.add(loss, state.step)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            state.step += 1
            n = len(batch[0])
            total += loss.detach().to(total.dtype) * n
            count += n
            if state.step % LOG_EVERY == 0:
                watch.check(accelerator, epoch, ckpt_dir)
                value = float(loss.detach())  # the one read of the device per LOG_EVERY steps
                accelerator.log({"train/loss": value, "lr": scheduler.get_last_lr()[0]}, step=state.step)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            t_ready = time.perf_counter()
        watch.check(accelerator, epoch, ckpt_dir)  # before anything of this epoch is kept
        seconds = time.perf_counter() - t0  # the check above waited for the device's queued work
        seen, epoch_loss = epoch_totals(accelerator, total, count)

        # validation, the best weights so far, the epoch's row, the checkpoint
        val = evaluate(cfg, model, val_loader, accelerator)
        improved = score_of(cfg, val) > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score_of(cfg, val), epoch + 1, 0
            if accelerator.is_main_process:
                save_weights(out_dir / BEST_SCRATCH_DIR, accelerator.unwrap_model(model, keep_torch_compile=False))
                os.replace(out_dir / BEST_SCRATCH_DIR / WEIGHTS_FILE, out_dir / BEST_FILE)
        else:
            state.bad_epochs += 1
        state.train_seconds += seconds
        state.samples_seen += seen
        state.history.append({"epoch": epoch + 1, "train_loss": epoch_loss, "val": val, "seconds": seconds,
                              "data_wait_seconds": data_wait})
        state.epoch = epoch + 1
        accelerator.log({"epoch": epoch + 1, "train/epoch_loss": epoch_loss,
                         **{f"val/{k}": v for k, v in val.items()}}, step=state.step)
        accelerator.print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {epoch_loss:.4f}, "
                          + ", ".join(f"val {k} {v:.4f}" for k, v in val.items() if k != "count")
                          + f", {seconds:.1f}s{' *' if improved else ''}")
        save_checkpoint(accelerator, ckpt_dir, out_dir, asdict(state))

    # the best epoch's weights back in; final figures, weights, samples and metrics.json (rank 0)
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if (out_dir / BEST_FILE).is_file():  # the same on every rank: check_shared_out_dir made sure
        accelerator.wait_for_everyone()
        load_weights_into(unwrapped, out_dir / BEST_FILE, cfg.name)
    val = evaluate(cfg, model, val_loader, accelerator)
    test = evaluate(cfg, model, test_loader, accelerator)
    metrics = run_metrics(cfg, state, mixed, accelerator, val, test)
    if accelerator.is_main_process:
        save_weights(out_dir, unwrapped, {"experiment": cfg.name, "config_hash": cfg.hash()})
        samples, extra = write_samples(cfg, unwrapped, splits["test"], out_dir)
        metrics.update(samples=samples, **extra)
        atomic_write_json(out_dir / METRICS_FILE, metrics)
        log_images(accelerator, active, {k: out_dir / v for k, v in samples.items() if isinstance(v, str)},
                   state.step)
    accelerator.log({**{f"test/{k}": v for k, v in test.items()}}, step=state.step)
    accelerator.wait_for_everyone()

    # Release DDP objects before end_training: gloo aborts at exit ~40% of the time otherwise.
    del model, unwrapped, optimizer, train_loader, val_loader, test_loader, scheduler
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    if accelerator.is_main_process:
        shutil.rmtree(out_dir / BEST_SCRATCH_DIR, ignore_errors=True)
        print(f"{cfg.name}: test " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items() if k != "count"))
        print(f"outputs in {out_dir.resolve()}")
        if cfg.task == "cvae":  # the last line says whether the label swap follows its source (#16)
            print(collapse_line(cfg.name, metrics.get("collapse")))
    return metrics


def _make_accelerator(cfg: ExperimentConfig, mixed: str, out_dir: Path, log_with: str):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if mixed == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU (fp16 matmuls on this CPU are unusable); "
                        "use bf16 on the CPU")
    try:
        return Accelerator(mixed_precision=mixed, log_with=None if log_with == "none" else log_with,
                           project_dir=str(out_dir), cpu=not torch.cuda.is_available(),
                           dynamo_backend="inductor" if cfg.compile else "no",
                           dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()))
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        # Accelerate keeps one mixed precision per process; say so instead of its "restart your runtime".
        asked = "" if cfg.mixed_precision == mixed else f", resolved from {cfg.mixed_precision!r}"
        raise UserError(f"this Python process already trained with another mixed precision, and Accelerate "
                        f"allows one per process: run this training (mixed precision {mixed!r}{asked}) in a "
                        f"new process, as each `segvae train` does") from None


def epoch_totals(accelerator, total: torch.Tensor, count: int) -> tuple[int, float]:
    """(samples seen, mean train loss) over all ranks. Both reduced tensors are on accelerator.device:
    NCCL reduces nothing else."""
    seen = int(accelerator.reduce(torch.tensor(count, device=accelerator.device), reduction="sum"))
    return seen, float(accelerator.reduce(total.to(accelerator.device), reduction="sum")) / max(seen, 1)


def run_metrics(cfg: ExperimentConfig, state: TrainState, mixed: str, accelerator, val: dict, test: dict) -> dict:
    """metrics.json's training part: where and how long it ran, the best epoch, final val/test figures."""
    return {
        "experiment": cfg.name, "task": cfg.task, "seed": cfg.seed,
        "num_processes": accelerator.num_processes, "mixed_precision": mixed,
        **device_info(accelerator.device),
        "epochs_run": state.epoch, "best_epoch": state.best_epoch,
        "train_seconds": state.train_seconds,
        "seconds_per_epoch": state.train_seconds / max(len(state.history), 1),
        "train_samples_per_s": state.samples_seen / max(state.train_seconds, 1e-9),
        "data_wait_fraction": sum(h.get("data_wait_seconds", 0.0) for h in state.history)
        / max(state.train_seconds, 1e-9),
        "val": val, "test": test, "history": state.history,
    }


def device_info(device: torch.device) -> dict:
    """What metrics.json records about where training ran ("cuda" / "cpu" / ...), so that a run that
    silently fell back to the CPU is caught (scripts/gpu_check.sh reads it)."""
    info = {"device": device.type, "device_name": None}
    if device.type == "cuda":  # TF32 changes fp32 results: say whether it was on
        info.update(device_name=torch.cuda.get_device_name(device),
                    tf32={"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32})
    return info


class FiniteWatch:
    """Records the first step whose loss was not finite, on the device (no host sync per step).

    check() reads it (one sync; with several processes one gather, which every rank calls at the same
    steps) and stops the run naming that step. Why not per step: a per-step read and gather would stall
    the GPU's queue on every step."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        fresh = ~torch.isfinite(loss.detach().float()) & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_value = torch.where(fresh, loss.detach().float(), self.bad_value)

    def check(self, accelerator, epoch: int, ckpt_dir: Path) -> None:
        info = torch.stack([self.first_bad.double(), self.bad_value.double()]).reshape(1, 2)
        if accelerator.num_processes > 1:
            info = accelerator.gather(info)  # every rank sees every rank's first bad step
        bad = info[info[:, 0] >= 0]
        if len(bad) == 0:
            return
        step, value = bad[bad[:, 0].argmin()].tolist()
        kept = f"; the last good checkpoint is kept at {ckpt_dir}" if ckpt_dir.is_dir() else ""
        raise UserError(f"loss became {value} at step {int(step) + 1} (epoch {epoch + 1}){kept}; try a lower --lr")


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
