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


@torch.no_grad()
def judge_swaps(model, test, judge, num_classes: int = 10, latent_dim: int = 16, batch_size: int = 256) -> dict:
    """The judge on a CVAE's test split: TRUE-label reconstructions (z = posterior mean), the 25
    grid swaps, and every test image swapped once to a random wrong label (the headline figure).
    Returns {"judge_acc_true_label", "grid_swap_acc", "test_swap_acc", "test_swap_count"}."""
    model.eval()
    n = len(test)
    x = torch.stack([test[i][0] for i in range(n)])
    y = _labels_of(test)
    recon = torch.cat([model.decode(model.encode(xb, yb)[0], yb) for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    grid = swap_inputs(test, 25, num_classes, latent_dim, seed=0)
    swapped = model.swap(grid["image"], grid["label"], grid["new_label"], grid["eps"])
    every = swap_inputs(test, n, num_classes, latent_dim, seed=0, spread=False)
    keys = ("image", "label", "new_label", "eps")
    swapped_all = torch.cat([model.swap(*(every[k][i:i + batch_size] for k in keys)) for i in range(0, n, batch_size)])
    return {"judge_acc_true_label": judge.score(recon, y),
            "grid_swap_acc": judge.score(swapped, grid["new_label"]),
            "test_swap_acc": judge.score(swapped_all, every["new_label"]),
            "test_swap_count": n}
