"""Metrics that stay exact under DDP: per-sample statistics are gathered, then reduced once.

Segmentation: per image (intersection, predicted pixels, target pixels, union) with hard
predictions at probability 0.5. Dataset-level Dice/IoU pool all pixels; "mean" averages
per-image scores (an image with empty prediction and target scores 1).
"""
from __future__ import annotations

import torch

from models.losses import bits_per_dim


def seg_stats(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, 4] float64: intersection, predicted, target, union pixel counts per image."""
    pred = (logits.float() > 0).flatten(1).double()
    tgt = (target.float() > 0.5).flatten(1).double()
    inter = (pred * tgt).sum(1)
    p, t = pred.sum(1), tgt.sum(1)
    return torch.stack([inter, p, t, p + t - inter], dim=1)


def seg_metrics(stats: torch.Tensor) -> dict[str, float]:
    stats = stats.double()
    inter, p, t, union = stats.unbind(1)
    total = lambda v: float(v.sum())  # noqa: E731
    per_dice = torch.where(p + t > 0, 2 * inter / (p + t).clamp(min=1), torch.ones_like(p))
    per_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(p))
    return {
        "dice": 2 * total(inter) / max(total(p) + total(t), 1.0),
        "iou": total(inter) / max(total(union), 1.0),
        "dice_mean": float(per_dice.mean()),
        "iou_mean": float(per_iou.mean()),
        "count": int(stats.shape[0]),
    }


def cvae_stats(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N, 3] float64: elbo, nll, kl per sample (nats)."""
    return torch.stack([terms["elbo"], terms["nll"], terms["kl"]], dim=1).double()


def cvae_metrics(stats: torch.Tensor, dims: int) -> dict[str, float]:
    elbo, nll, kl = stats.double().mean(0).tolist()
    return {
        "elbo": elbo, "nll": nll, "kl": kl,
        "bpd": float(bits_per_dim(torch.tensor(elbo), dims)),
        "count": int(stats.shape[0]),
    }
