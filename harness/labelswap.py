"""Label-swapped generation, shared by training figures, export checks, bench and the judge.

The swap that works (../shared/notes/cvae-calibration.md, reading A): encode with the TRUE
label, decode with a WRONG one. Inputs are picked across classes (test folders are
class-sorted) and the noise is explicit, so every backend sees identical inputs.
"""
from __future__ import annotations

import torch


def wrong_labels(labels: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """A label != the true one for each sample, uniform over the other classes, reproducible."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, num_classes, labels.shape, generator=g)
    return (labels + offset) % num_classes


def swap_inputs(dataset, n: int = 25, num_classes: int = 10, latent_dim: int = 16, seed: int = 0,
                spread: bool = True) -> dict[str, torch.Tensor]:
    """n (image, label, new_label, eps) inputs; spread=True picks round-robin across classes."""
    labels_all = _labels_of(dataset)
    if spread:
        by_class = [torch.nonzero(labels_all == c).flatten().tolist() for c in range(num_classes)]
        idx, k = [], 0
        while len(idx) < min(n, len(labels_all)):
            for c in range(num_classes):
                if k < len(by_class[c]) and len(idx) < n:
                    idx.append(by_class[c][k])
            k += 1
    else:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(labels_all), generator=g)[:n].tolist()
    images = torch.stack([dataset[i][0] for i in idx])
    labels = labels_all[idx].long()
    g = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn(len(idx), latent_dim, generator=g)
    return {"image": images, "label": labels, "new_label": wrong_labels(labels, num_classes, seed), "eps": eps}


def _labels_of(dataset) -> torch.Tensor:
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
