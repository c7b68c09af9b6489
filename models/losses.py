"""Losses. Dice is computed on probabilities (sigmoid inside): Dice on raw logits is a known bug."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image on sigmoid probabilities, averaged over the batch."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    dice = (2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    return 1 - dice.mean()


SEGMENTATION_LOSSES = {"bce": bce_loss, "dice": soft_dice_loss}


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)^2), summed over all dimensions but the batch."""
    var = torch.exp(2 * log_scale)
    ll = -0.5 * ((x - mean) ** 2 / var + 2 * log_scale + LOG_2PI)
    return ll.flatten(1).sum(1)


def mc_kl(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo KL(q(z|x) || N(0, I)) from one sample: log q(z|x) - log p(z), per sample."""
    std = torch.exp(0.5 * logvar)
    log_q = (-0.5 * (((z - mu) / std) ** 2 + logvar + LOG_2PI)).sum(1)
    log_p = (-0.5 * (z ** 2 + LOG_2PI)).sum(1)
    return log_q - log_p


def elbo_terms(x, out: dict, log_scale, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-sample ELBO terms in nats, averaged over the batch. `loss` weights the KL by kl_weight
    (1.0 is the plain negative ELBO); `elbo` is always the unweighted bound."""
    ll = gaussian_log_likelihood(x.float(), out["mean"].float(), log_scale.float())
    kl = mc_kl(out["z"].float(), out["mu"].float(), out["logvar"].float())
    return {
        "loss": (kl_weight * kl - ll).mean(),
        "elbo": (ll - kl),   # per sample
        "nll": -ll,          # per sample
        "kl": kl,            # per sample
    }


def bits_per_dim(elbo_nats: torch.Tensor, dims: int) -> torch.Tensor:
    """bpd of dequantised 8-bit data: (-ELBO + D ln 256) / (D ln 2), ELBO of x in [0, 1]."""
    return (-elbo_nats + dims * math.log(256)) / (dims * math.log(2))
