"""The inputs export uses: a run's held-out images for parity, training images for int8 calibration
(class-stratified and seeded, shared with the bench's torch int8 backend so both int8 paths are
calibrated on the same images), random inputs only when the data cannot be loaded (and then the
printout and export.json say so)."""
from __future__ import annotations

import torch

from harness.data import IMAGENET_MEAN, IMAGENET_STD, MASK_RULE, SegmentationDataset, build_splits, class_names
from harness.errors import UserError
from harness.labelswap import swap_inputs, wrong_labels


def dataset_info(cfg) -> dict:
    """What a graph's metadata says about the run's dataset (class names, normalisation, mask rule)."""
    return {"class_names": list(class_names(cfg.dataset)), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "mask_rule": MASK_RULE}


def cycle(t: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:n]


class ExportData:
    """Lazily loaded splits of the run's dataset; `error` says why data is unavailable (then random inputs)."""

    def __init__(self, cfg, data_root):
        self.cfg, self.data_root = cfg, data_root
        self._splits, self.error = None, None

    def split(self, name: str):
        if self._splits is None and self.error is None:
            try:
                self._splits = build_splits(self.cfg.replace(augment=False), data_root=self.data_root, download=False)
            except (UserError, OSError) as e:
                self.error = f"{type(e).__name__}: {e}"
        if self._splits is None or len(self._splits[name]) == 0:
            return None
        return self._splits[name]


def seg_batch(ds, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    idx = range(start, min(start + n, len(ds)))
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([m for _, m in items])


def inputs_for(cfg, spec_kind: str, data: ExportData, n: int, split: str = "val",
               seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """n inputs for a graph from a REAL split (source name returned), random if the data is unavailable."""
    g = torch.Generator().manual_seed(seed)
    ds = data.split(split)
    if cfg.task == "segmentation":
        if ds is not None:
            x, _ = seg_batch(ds, n)
            return {"image": cycle(x, n)}, f"{split} split"
        s = int(cfg.image_size)
        return {"image": torch.randn(n, 3, s, s, generator=g)}, "random"

    k, latent = cfg.num_classes, int(cfg.model["latent_dim"])
    if ds is not None:
        inp = swap_inputs(ds, n=n, num_classes=k, latent_dim=latent, seed=seed)
        inp = {key: cycle(v, n) for key, v in inp.items()}
        source = f"{split} split"
    else:
        c, s = int(cfg.model["in_channels"]), int(cfg.model["image_size"])
        labels = torch.randint(0, k, (n,), generator=g)
        inp = {"image": torch.rand(n, c, s, s, generator=g), "label": labels,
               "new_label": wrong_labels(labels, k, seed), "eps": torch.randn(n, latent, generator=g)}
        source = "random"
    if spec_kind == "decoder":
        # decoder inputs: prior samples z with the (wrong) labels of the swap inputs
        return {"z": torch.randn(n, latent, generator=torch.Generator().manual_seed(seed + 7)),
                "label": inp["new_label"]}, source
    return inp, source


def seg_eval_set(cfg, data: ExportData):
    """(dataset, source) for Dice: the val split, or a seeded random stand-in when data is unavailable."""
    val = data.split("val")
    if val is not None:
        return val, "val split"

    g = torch.Generator().manual_seed(3)
    s = int(cfg.image_size)
    return SegmentationDataset((torch.rand(16, 3, s, s, generator=g) * 255).to(torch.uint8),
                               (torch.rand(16, 1, s, s, generator=g) > 0.5).to(torch.uint8)), "random"


CALIBRATION_SEED = 1
CALIBRATION_BATCH = 16  # calibration batches (ORT's reader and torch int8's observers alike)


def calibration_inputs(cfg, data: ExportData, n: int, seed: int = CALIBRATION_SEED) -> tuple[dict[str, torch.Tensor], dict]:
    """n training inputs for int8 calibration, drawn by harness.data.stratified_indices (seeded; every
    breed, digit or class present once n reaches the number of classes). ORT int8 (export) and torch
    int8 (bench) both call this with the count and seed export.json records, so they see the same
    images. Returns (inputs, {"source", "count", "seed", "sampler", "classes", "class_counts"})."""
    import numpy as np

    from harness.data import class_labels, stratified_indices

    train = data.split("train")
    if train is None:
        inputs, source = inputs_for(cfg, "segmentation" if cfg.task == "segmentation" else "swap", data, n,
                                    split="train", seed=seed)
        return inputs, {"source": source, "count": n, "seed": seed, "sampler": "random stand-in (no training data)",
                        "classes": None, "class_counts": None}
    labels = class_labels(train)
    idx = stratified_indices(labels, n, seed)
    if cfg.task == "segmentation":
        inputs = {"image": torch.stack([train[int(i)][0] for i in idx])}
    else:
        from harness.labelswap import swap_inputs

        inputs = swap_inputs(train.subset(torch.as_tensor(idx)), n=len(idx), num_classes=cfg.num_classes,
                             latent_dim=int(cfg.model["latent_dim"]), seed=seed, spread=False)
    present, counts = np.unique(labels[idx], return_counts=True)
    return inputs, {"source": "train split", "count": int(len(idx)), "seed": seed,
                    "sampler": "harness.data.stratified_indices (class-stratified, seeded)",
                    "classes": f"{len(present)} of {len(np.unique(labels))}", "class_counts": counts.tolist()}
