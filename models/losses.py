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


def analytic_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per sample and latent dimension, nats [N, D]."""
    return 0.5 * (mu ** 2 + logvar.exp() - logvar - 1)


def elbo_terms(x, out: dict, log_scale, kl_weight: float = 1.0, free_bits: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-sample ELBO terms in nats, averaged over the batch. `loss` weights the KL by kl_weight
    (1.0 is the plain negative ELBO); `elbo` is always the unweighted bound.

    free_bits > 0 (nats per latent dimension, Kingma et al. 2016): the loss's KL term becomes
    sum_d max(free_bits, batch-mean analytic KL_d), so no dimension is pushed below free_bits.
    Why: with a strong KL weight on a small dataset the posterior collapses before the encoder
    learns anything (the decoder draws class templates, the label swap ignores its source)."""
    ll = gaussian_log_likelihood(x.float(), out["mean"].float(), log_scale.float())
    kl = mc_kl(out["z"].float(), out["mu"].float(), out["logvar"].float())
    if free_bits > 0:
        kl_term = analytic_kl_per_dim(out["mu"].float(), out["logvar"].float()).mean(0).clamp(min=free_bits).sum()
    else:
        kl_term = kl.mean()
    return {
        "loss": kl_weight * kl_term - ll.mean(),
        "elbo": (ll - kl),   # per sample
        "nll": -ll,          # per sample
        "kl": kl,            # per sample
    }


def bits_per_dim(elbo_nats: torch.Tensor, dims: int) -> torch.Tensor:
    """bpd of dequantised 8-bit data: (-ELBO + D ln 256) / (D ln 2), ELBO of x in [0, 1]."""
    return (-elbo_nats + dims * math.log(256)) / (dims * math.log(2))
