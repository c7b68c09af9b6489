"""Image degradations a generator produces (blur, low contrast, noise), on tensors in [0, 1].

Shared by the judge's training augmentation, its fitness measurement (harness.judge) and
scripts/judge_blur.py, so "blur1" means the same Gaussian everywhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ceil(3 sigma)."""
    r = max(1, int(3 * sigma + 0.999))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] with reflect padding; sigma in pixels (0: unchanged)."""
    if sigma <= 0:
        return x
    k = gaussian_kernel(float(sigma))
    r = min(len(k) // 2, x.shape[2] - 1, x.shape[3] - 1)  # reflect padding needs pad < size
    k = k[len(k) // 2 - r: len(k) // 2 + r + 1]
    k, c = k / k.sum(), x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def low_contrast(x: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """Contrast scaled by `factor` around each image's own mean (0.5: halved)."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return m + factor * (x - m)


def random_degrade(x: torch.Tensor, spec: dict, g: torch.Generator) -> torch.Tensor:
    """Training augmentation: per image, with its own probability, a Gaussian blur of sigma
    U(0.3, blur_max), contrast scaled by U(contrast_min, 1) and Gaussian noise of std U(0, noise_max)."""
    n = len(x)
    if n == 0 or not spec:
        return x
    out = x.clone()
    blur = torch.rand(n, generator=g) < spec["p_blur"]
    sigmas = 0.3 + torch.rand(n, generator=g) * (spec["blur_max"] - 0.3)
    for i in torch.nonzero(blur).flatten().tolist():  # per image: sigma differs
        out[i:i + 1] = gaussian_blur(out[i:i + 1], float(sigmas[i]))
    contrast = torch.rand(n, generator=g) < spec["p_contrast"]
    factors = spec["contrast_min"] + torch.rand(n, generator=g) * (1 - spec["contrast_min"])
    factors = torch.where(contrast, factors, torch.ones(n))
    m = out.mean(dim=(1, 2, 3), keepdim=True)
    out = m + factors.view(-1, 1, 1, 1) * (out - m)
    noisy = (torch.rand(n, generator=g) < spec["p_noise"]).float() * torch.rand(n, generator=g) * spec["noise_max"]
    out = out + noisy.view(-1, 1, 1, 1) * torch.randn(out.shape, generator=g)
    return out.clamp(0, 1)


def class_means(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each present class's mean image (what a collapsed CVAE draws) and its label."""
    present = [c for c in range(num_classes) if bool((labels == c).any())]
    means = torch.stack([images[labels == c].float().mean(0) for c in present]) if present else images[:0]
    return means, torch.tensor(present, dtype=torch.long)
