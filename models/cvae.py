"""Conditional VAE: inputs (image, label); the label goes through an embedding layer.

`nn.Embedding` on the class index equals a bias-free linear layer on the one-hot vector.
The embedding enters the encoder (as extra constant channels) and every decoder block
(as a per-channel shift), so the decoder cannot ignore it. The decoder outputs the mean of
a Gaussian whose log-scale is one learned scalar (`log_scale`).

Label swap (see ../shared/notes/cvae-calibration.md): encode with the TRUE label, decode
with the wrong one; encoding with the wrong label lets the encoder compensate and the
class does not change.
"""
from __future__ import annotations

import torch
from torch import nn

from models.rewrites import DEFAULT_UP4, replace_transposed_convs


class LabelShift(nn.Module):
    """conv block modulated per channel by the label embedding (FiLM: scale and shift)."""

    def __init__(self, cin: int, cout: int, embed_dim: int, up: bool):
        super().__init__()
        conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1) if up else nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv = conv
        self.film = nn.Linear(embed_dim, 2 * cout)
        self.act = nn.SiLU()

    def forward(self, x, e):
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        return self.act(self.conv(x) * (1 + scale) + shift)


class CVAE(nn.Module):
    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 latent_dim: int = 16, hidden_channels: int = 32, embed_dim: int = 32,
                 log_scale_init: float = 0.0):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.latent_dim = latent_dim
        h, s = hidden_channels, image_size // 4
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels + embed_dim, h, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(h, 2 * h, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * h, 2 * h, 3, 1, 1), nn.SiLU(),
            nn.Flatten(),
        )
        self.to_stats = nn.Linear(2 * h * s * s + embed_dim, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim + embed_dim, 2 * h * s * s)
        self.dec_shape = (2 * h, s, s)
        self.dec_blocks = nn.ModuleList([
            LabelShift(2 * h, 2 * h, embed_dim, up=False),
            LabelShift(2 * h, h, embed_dim, up=True),
            LabelShift(h, h, embed_dim, up=True),
        ])
        self.to_image = nn.Conv2d(h, in_channels, 3, 1, 1)
        # Learned scalar log-scale of the Gaussian likelihood. Starting it low (e.g. -2, sigma 0.14)
        # makes reconstruction matter from the first step, which keeps the decoder from ignoring z.
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale_init)))

    def check_labels(self, y: torch.Tensor):
        """Eager-mode guard with a clear message (nn.Embedding's own error names no class count)."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return
        if y.dtype not in (torch.int64, torch.int32) or y.dim() != 1:
            raise ValueError(f"labels must be a 1-D integer tensor of class indices, got {y.dtype} {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_labels(y)
        e = self.embed(y)
        maps = e[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        feats = self.encoder(torch.cat([x, maps], dim=1))
        mu, logvar = self.to_stats(torch.cat([feats, e], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_labels(y)
        e = self.embed(y)
        x = self.from_latent(torch.cat([z, e], dim=1)).view(-1, *self.dec_shape)
        for block in self.dec_blocks:
            x = block(x, e)
        return torch.sigmoid(self.to_image(x))

    def forward(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = self.encode(x, y)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return {"mean": self.decode(z, y), "mu": mu, "logvar": logvar, "z": z}

    def swap(self, x: torch.Tensor, y: torch.Tensor, new_y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Encode (x, y) with its true label, decode the sampled z with new_y."""
        mu, logvar = self.encode(x, y)
        return self.decode(mu + torch.exp(0.5 * logvar) * eps, new_y)


class LabelSwap(nn.Module):
    """(image, label, new_label, eps) -> image; the graph exported for label-swapped generation."""

    def __init__(self, cvae: CVAE):
        super().__init__()
        self.cvae = cvae

    def forward(self, image, label, new_label, eps):
        return self.cvae.swap(image, label, new_label, eps)


class Decoder(nn.Module):
    """(z, label) -> image; the graph exported for pure generation."""

    def __init__(self, cvae: CVAE):
        super().__init__()
        self.cvae = cvae

    def forward(self, z, label):
        return self.cvae.decode(z, label)


def inference_form(model: CVAE, convtranspose4: str | None = DEFAULT_UP4) -> CVAE:
    """An eval-mode copy computing the same function: each ConvTranspose2d(4, stride 2, padding 1) of the
    decoder becomes a SubpixelUp4 of form `convtranspose4` ("conv3x3" | "conv2x2"; None: kept), so the
    int8 graph holds no fp32 ConvTranspose (models.rewrites). The trained model is left untouched."""
    import copy

    return replace_transposed_convs(copy.deepcopy(model).eval(), up4=convtranspose4)
