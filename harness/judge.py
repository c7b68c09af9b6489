"""Judge CNNs: one small classifier per CVAE dataset, used to score label-swapped generations.

A judge is trained by the harness on the dataset's real training split (the validation split
picks the best epoch). Generated images are blurred and low in contrast, and a judge trained on
sharp digits misreads them (issue #16: 95% on real digits, 4% on plainly correct swaps), so the
training images are degraded the way a generator degrades them (Gaussian blur of random width,
halved-or-lower contrast, pixel noise; `RECIPES[..]["degrade"]`). Before any swap score is shown
the judge is measured on the real test split as is and degraded, and on each class's mean
training image (what a collapsed CVAE draws), and declared fit or not (`FIT_THRESHOLDS`).

Files (out_dir, default runs/judges/<dataset>; names in harness.run_folder): `judge.safetensors`
(weights, never pickled) and `judge.json` (its settings, precision included, `accuracy` {real,
blur1, blur2, low_contrast, class_means, counts}, `fit`, `fit_reasons`, val_acc, test_acc (=
accuracy.real), seconds, ...).

The judge stage (`segvae judge`, `judge_stage`) trains or reuses a judge and scores CVAE runs with
it (`judge_run` -> RUN/labelswap.json); `load_judges` gives `segvae bench --judges` the scorers.

Inputs are images in [0, 1], [N, C, H, W]; the per-channel normalisation lives inside the
network (buffers), so callers never normalise.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from harness.collapse import collapse_metrics
from harness.config import get_experiment
from harness.data import build_splits, tensors_of
from harness.degrade import class_means, gaussian_blur, low_contrast, random_degrade
from harness.errors import UserError
from harness.hardware import cpu_has_native_bf16
from harness.io import atomic_write, atomic_write_json, read_json
from harness.labelswap import judge_swaps
from harness.run_folder import (JUDGE_FILE, JUDGE_WEIGHTS_FILE, LABELSWAP_FILE, METRICS_FILE, data_root_for,
                                judge_dir, load_run, load_weights_into)

# Per dataset: network shape and training recipe, tuned on 2 CPU cores (see train_judge).
RECIPES = {
    "mnist": {
        "arch": {"in_channels": 1, "num_classes": 10, "widths": [32, 64, 128], "blocks": 1,
                 "mean": [0.1307], "std": [0.3081], "stem": False},
        "epochs": 6, "batch_size": 64, "lr": 4e-3, "weight_decay": 5e-4, "pad": 2, "flip": False,
        "label_smoothing": 0.0,
        "degrade": {"p_blur": 0.5, "blur_max": 2.5, "p_contrast": 0.4, "contrast_min": 0.3,
                    "p_noise": 0.3, "noise_max": 0.15},
    },
    "cifar10": {
        "arch": {"in_channels": 3, "num_classes": 10, "widths": [48, 96, 192], "blocks": 1,
                 "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616], "stem": False},
        # 12 epochs on ../shared/data's 6,800 training images: real 66.9% (unfit); 30: real 74.6%, blur1 71.0%
        "epochs": 30, "batch_size": 128, "lr": 4e-3, "weight_decay": 5e-4, "pad": 4, "flip": True,
        "label_smoothing": 0.1,
        "degrade": {"p_blur": 0.5, "blur_max": 2.0, "p_contrast": 0.3, "contrast_min": 0.4,
                    "p_noise": 0.3, "noise_max": 0.08},
    },
}

# A judge is fit to score generated images when it reads real test images, blurred ones (sigma 1 px)
# and, for MNIST, every class-mean image (a blurry prototype a person reads at once).
FIT_THRESHOLDS = {
    "mnist": {"real": 0.95, "blur1": 0.90, "class_means": 1.0},
    "cifar10": {"real": 0.70, "blur1": 0.50},
}
PRECISIONS = ("auto", "fp32", "bf16")


# ----------------------------------------------------------------------------- network
def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c))

    def forward(self, x):
        return x + self.body(x)


class JudgeNet(nn.Module):
    """ResNet-9-ish: optional stem conv at full resolution, then per stage conv-BN-ReLU + maxpool (+ residual blocks), GAP, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(32, 64, 128), blocks: int = 1,
                 mean=(0.5,), std=(0.5,), stem: bool = True):
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError("mean/std need one value per input channel")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        layers: list[nn.Module] = [_conv_bn(in_channels, widths[0])] if stem else []
        cin = widths[0] if stem else in_channels
        for i, w in enumerate(widths):
            layers += [_conv_bn(cin, w), nn.MaxPool2d(2)]
            if i != 1:  # like ResNet-9: residual blocks after the first and last stage
                layers += [_Residual(w) for _ in range(blocks)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.features(x)
        return self.head(torch.flatten(F.adaptive_max_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- the judge
class Judge:
    """A trained judge: predict labels of images in [0, 1]; score label-swap outputs."""

    def __init__(self, model: JudgeNet, meta: dict, batch_size: int = 512):
        self.model = model.eval()
        self.meta = dict(meta)
        self.dataset = meta.get("dataset")
        self.batch_size = batch_size

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        x = _as_images(images, self.model.mean.shape[1])
        outs = [self.model(x[i:i + self.batch_size]).float() for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, self.model.head.out_features)

    def predict(self, images) -> np.ndarray:
        """Predicted class per image, int64 [N]."""
        return self.logits(images).argmax(1).numpy().astype(np.int64)

    def score(self, images, target_labels) -> float:
        """Share of images classified as their target label (label-swap success rate)."""
        target = np.asarray(target_labels.cpu() if isinstance(target_labels, torch.Tensor) else target_labels,
                            dtype=np.int64).reshape(-1)
        pred = np.asarray(self.predict(images)).reshape(-1)
        if len(pred) != len(target):
            raise ValueError(f"{len(pred)} images but {len(target)} target labels")
        return float((pred == target).mean()) if len(target) else float("nan")


def load_judge(out_dir: str | os.PathLike) -> Judge:
    """Rebuild a judge from out_dir/judge.json + judge.safetensors (never unpickles)."""
    out_dir = Path(out_dir)
    meta = read_json(out_dir / JUDGE_FILE, "judge metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), dict):
        raise UserError(f"{out_dir / JUDGE_FILE}: expected a JSON object with an 'arch' object")
    try:
        model = JudgeNet(**meta["arch"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{out_dir / JUDGE_FILE}: bad judge arch {meta['arch']!r}: {e}") from None
    load_weights_into(model, out_dir / JUDGE_WEIGHTS_FILE, f"judge-{meta.get('dataset', '?')}")
    return Judge(model, meta)


# ----------------------------------------------------------------------------- training
def resolve_judge_precision(precision: str = "auto") -> str:
    """'auto' -> 'bf16' where the CPU computes bf16 natively (it is slower elsewhere), else 'fp32'."""
    if precision not in PRECISIONS:
        raise UserError(f"invalid judge precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if cpu_has_native_bf16() else "fp32"


def judge_settings(dataset: str, data_root=None, epochs: int | None = None, seed: int = 0,
                   max_train_samples: int | None = None, precision: str = "auto") -> dict:
    """What determines a trained judge (recorded in judge.json): `segvae run` reuses a judge whose
    judge.json matches, instead of spending minutes retraining it. The precision is resolved here,
    so a judge trained in bf16 is not reused on a machine that would train it in fp32."""
    recipe = RECIPES[dataset]
    return {"dataset": dataset, "arch": recipe["arch"], "epochs": epochs or recipe["epochs"], "seed": seed,
            "recipe": {k: v for k, v in recipe.items() if k != "arch"},
            "data_root": str(data_root) if data_root is not None else None,
            "max_train_samples": max_train_samples, "precision": resolve_judge_precision(precision),
            "fit_thresholds": FIT_THRESHOLDS[dataset]}


def judge_is_current(out_dir: str | os.PathLike, settings: dict) -> bool:
    """True when out_dir holds a judge trained with exactly these settings (and its weights)."""
    out_dir = Path(out_dir)
    try:
        meta = read_json(out_dir / JUDGE_FILE, "judge metadata")
    except (UserError, OSError):
        return False
    want = json.loads(json.dumps(settings))  # tuples -> lists, as judge.json stores them
    return (out_dir / JUDGE_WEIGHTS_FILE).is_file() and isinstance(meta, dict) and all(
        meta.get(k) == v for k, v in want.items())


def train_judge(dataset: str, data_root=None, out_dir=None, epochs: int | None = None, seed: int = 0,
                threads: int | None = None, max_train_samples: int | None = None, precision: str = "auto",
                log=print) -> dict:
    """Train the judge for `dataset` (mnist | cifar10) on its real training split, degraded.

    The best epoch by validation accuracy (real and blurred images) is kept; then its fitness is
    measured on the real test split (judge_fitness). Writes out_dir/judge.safetensors and
    out_dir/judge.json (default out_dir: runs/judges/<dataset>) and returns the judge.json dict.
    """
    if dataset not in RECIPES:
        raise UserError(f"no judge for dataset {dataset!r}: expected one of {', '.join(RECIPES)}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise UserError(f"invalid setting epochs={epochs!r}: expected a positive integer")
    recipe = RECIPES[dataset]
    epochs = epochs or recipe["epochs"]
    settings = judge_settings(dataset, data_root, epochs, seed, max_train_samples, precision)
    out_dir = Path(out_dir) if out_dir is not None else judge_dir(dataset)

    with _threads(threads):
        t0 = time.perf_counter()
        splits = build_splits(get_experiment(f"cvae-{dataset}"), data_root=data_root)
        data = {k: tensors_of(splits[k]) for k in ("train", "val", "test")}
        if max_train_samples:
            data["train"] = tuple(t[:max_train_samples] for t in data["train"])
        log(f"judge {dataset}: {len(data['train'][1])} train / {len(data['val'][1])} val / "
            f"{len(data['test'][1])} test images (loaded in {time.perf_counter() - t0:.1f}s), "
            f"precision {settings['precision']}")

        torch.manual_seed(seed)
        model = JudgeNet(**recipe["arch"])
        fit = _fit(model, data["train"], data["val"], recipe, epochs, seed, settings["precision"] == "bf16",
                   log=lambda s: log(f"judge {dataset}: {s}"))
        judge = Judge(model, {"dataset": dataset, "arch": recipe["arch"]})
        fitness = judge_fitness(judge, dataset, data["test"], data["train"])
        seconds = time.perf_counter() - t0

    meta = {
        **settings, **fitness,
        "val_acc": fit["best_val_acc"],
        "test_acc": fitness["accuracy"]["real"],
        "best_epoch": fit["best_epoch"],
        "seconds": seconds,
        "train_seconds": fit["seconds"],
        "threads": torch.get_num_threads() if threads is None else threads,
        "counts": {k: int(len(v[1])) for k, v in data.items()},
        "history": fit["history"],
        "weights": JUDGE_WEIGHTS_FILE,
    }
    _save(out_dir, model, meta)
    acc = fitness["accuracy"]
    log(f"judge {dataset}: test accuracy real {acc['real']:.4f}, blur1 {acc['blur1']:.4f}, blur2 "
        f"{acc['blur2']:.4f}, low contrast {acc['low_contrast']:.4f}, class means {acc['class_means']:.2f} "
        f"-> {'fit' if fitness['fit'] else 'UNFIT: ' + '; '.join(fitness['fit_reasons'])} "
        f"(best epoch {fit['best_epoch']}/{epochs}, {seconds:.1f}s) -> {out_dir}")
    return meta


def judge_fitness(judge: "Judge", dataset: str, test, train) -> dict:
    """{"accuracy": {real, blur1, blur2, low_contrast, class_means, counts}, "fit", "fit_reasons"}:
    the judge on the real test split as is, blurred (Gaussian sigma 1 and 2 px), with contrast
    halved around each image's mean, and on each class's mean TRAINING image; fit per FIT_THRESHOLDS."""
    x, y = test
    x = x.float()
    means, mean_labels = class_means(train[0].float(), train[1], judge.model.head.out_features)
    acc = {"real": judge.score(x, y), "blur1": judge.score(gaussian_blur(x, 1.0), y),
           "blur2": judge.score(gaussian_blur(x, 2.0), y), "low_contrast": judge.score(low_contrast(x, 0.5), y),
           "class_means": judge.score(means, mean_labels),
           "counts": {"test": int(len(y)), "class_means": int(len(mean_labels))}}
    reasons = [f"{k} {acc[k]:.3f} < {v:g}" for k, v in FIT_THRESHOLDS.get(dataset, {}).items()
               if not acc[k] >= v]  # NaN (no images) is unfit too
    return {"accuracy": acc, "fit": not reasons, "fit_reasons": reasons}


def _fit(model: JudgeNet, train, val, recipe: dict, epochs: int, seed: int, use_bf16: bool, log=print) -> dict:
    """AdamW + OneCycle, label smoothing, crop/flip + degradation augmentation on tensors; keeps the
    best epoch by validation accuracy averaged over real and blurred (sigma 1 px) images."""
    x_tr, y_tr = train
    if len(y_tr) == 0:
        raise UserError("the judge's training split is empty")
    bs = min(recipe["batch_size"], len(y_tr))
    steps = epochs * math.ceil(len(y_tr) / bs)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.25)
    g = torch.Generator().manual_seed(seed)
    val_blur = (gaussian_blur(val[0].float(), 1.0), val[1])
    model = model.to(memory_format=torch.channels_last)
    best = {"acc": -1.0, "epoch": 0, "state": None}
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y_tr), generator=g)
        total, n = 0.0, 0
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            xb = random_degrade(_augment(x_tr[idx], recipe["pad"], recipe["flip"], g), recipe.get("degrade"), g)
            xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else nullcontext():
                loss = F.cross_entropy(model(xb).float(), y_tr[idx], label_smoothing=recipe["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        val_acc = (Judge(model, {}).score(*val) + Judge(model, {}).score(*val_blur)) / 2 if len(val[1]) else float("nan")
        row = {"epoch": epoch, "train_loss": total / max(n, 1), "val_acc": val_acc,
               "seconds": time.perf_counter() - te}
        history.append(row)
        if not len(val[1]) or val_acc > best["acc"]:
            best = {"acc": val_acc, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        log(f"epoch {epoch}/{epochs} loss {row['train_loss']:.4f} val_acc {val_acc:.4f} ({row['seconds']:.1f}s)")
    model.load_state_dict(best["state"])
    model.eval()
    return {"best_val_acc": best["acc"], "best_epoch": best["epoch"], "history": history,
            "seconds": time.perf_counter() - t0}


def _augment(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by `pad` (one offset per image) and optional horizontal flip."""
    n, _, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(-1, x.shape[1], -1, w + 2 * pad)
        xp = torch.gather(xp, 2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(-1, x.shape[1], h, -1)
        x = torch.gather(xp, 3, cols)
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


# ----------------------------------------------------------------------------- helpers
def _as_images(images, channels: int) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach()
    x = x.to("cpu", torch.float32)
    if x.dim() == 3:  # [N, H, W] single-channel
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"expected images [N, {channels}, H, W] in [0, 1], got shape {tuple(x.shape)}")
    return x


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _save(out_dir: Path, model: JudgeNet, meta: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / JUDGE_WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"dataset": meta["dataset"]}))
    atomic_write_json(out_dir / JUDGE_FILE, meta)


# ----------------------------------------------------------------------------- the judge stage
def judge_stage(dataset: str, runs=(), data_root=None, out_dir=None, epochs: int | None = None, seed: int = 0,
                retrain: bool = False) -> Path:
    """`segvae judge`: train the dataset's judge into out_dir (default runs/judges/<dataset>), or reuse
    the one there when its settings match, then score each CVAE run (judge_run). data_root None: the
    data the first run recorded, else the embedded sample. Returns the judge folder."""
    root = data_root if data_root or not runs else str(data_root_for(runs[0], None, "segvae judge"))
    out = Path(out_dir) if out_dir else judge_dir(dataset)
    if not retrain and judge_is_current(out, judge_settings(dataset, root, epochs, seed)):
        print(f"[judge {dataset}] reusing the judge in {out} (same settings; --retrain to redo it)", flush=True)
    else:
        train_judge(dataset, root, out_dir=out, epochs=epochs, seed=seed)
    judges = {dataset: load_judge(out)}
    for run in runs:
        judge_run(Path(run), judges, root)
    return out


def judge_run(run: Path, judges: dict, root) -> None:
    """Judge a CVAE run in PyTorch (harness.labelswap.judge_swaps) and record, beside the scores, the
    judge's fitness and the run's collapse metrics (measured here if training did not), so a swap
    score is never read without them. Runs of other tasks or datasets are left alone."""
    cfg, model = load_run(run)
    if cfg.task != "cvae" or cfg.dataset not in judges:
        return
    judge = judges[cfg.dataset]
    test = build_splits(cfg, root)["test"]
    scores = judge_swaps(model, test, judge, cfg.num_classes, cfg.model.latent_dim)
    collapse = read_json(run / METRICS_FILE, "metrics").get("collapse")
    record = {"recon": {"judge_acc_true_label": scores.pop("judge_acc_true_label")},
              "judge": {"test_acc_real": judge.meta.get("test_acc"), "judge_fit": judge.meta.get("fit"),
                        "judge_fit_reasons": judge.meta.get("fit_reasons"),
                        **scores}}
    if not isinstance(collapse, dict):  # a run trained before collapse was measured at training time
        record["collapse"] = collapse_metrics(model, test, cfg.num_classes)
    atomic_write_json(run / LABELSWAP_FILE, record)  # the judge stage's own file: metrics.json stays training's


def load_judges(folder: str | os.PathLike) -> dict:
    """{dataset: judge.score} for every judge under folder (OUT/judges/<dataset>/): what
    `segvae bench --judges` scores the label swaps with."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--judges folder not found: {folder} (expected OUT/judges from `segvae judge`)")
    return {d.name: load_judge(d).score for d in sorted(folder.iterdir()) if d.is_dir()}
