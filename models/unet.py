"""UNet for binary segmentation: encoder/decoder with skip concatenation, BatchNorm and ReLU.

Variants are arguments, not copies: `down` picks MaxPool or a strided conv, `up` picks
ConvTranspose or bilinear Upsample followed by a conv. Input height and width must be
multiples of 2**depth. The output is one channel of mask logits.
"""
from __future__ import annotations

import torch
from torch import nn

from models.rewrites import PixelShuffleUp, replace_transposed_convs  # noqa: F401 (PixelShuffleUp: re-exported)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


def downsample(kind: str, channels: int) -> nn.Module:
    if kind == "maxpool":
        return nn.MaxPool2d(2)
    if kind == "strided":
        return conv_bn_relu(channels, channels, stride=2)
    raise ValueError(f"down must be 'maxpool' or 'strided', got {kind!r}")


def upsample(kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "transpose":
        return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
    if kind == "upsample":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=1),
        )
    raise ValueError(f"up must be 'transpose' or 'upsample', got {kind!r}")


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 32,
                 depth: int = 4, down: str = "maxpool", up: str = "transpose"):
        super().__init__()
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(downsample(down, widths[i]) for i in range(depth))
        self.encoders = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(upsample(up, widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.decoders = nn.ModuleList(DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for down, enc in zip(self.downs, self.encoders):
            skips.append(x)
            x = enc(down(x))
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


# ---------------------------------------------------------------------------- inference form
def inference_form(model: UNet, fold_batchnorm: bool = True, pixel_shuffle_up: bool = True) -> UNet:
    """An eval-mode copy computing the same function with fewer, quantization-friendly ops.

    fold_batchnorm: each Conv -> BatchNorm pair becomes one Conv (running statistics folded in).
    pixel_shuffle_up: each ConvTranspose2d(2, stride 2) becomes a PixelShuffleUp (models.rewrites).
    The trained model is left untouched.
    """
    import copy
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    if fold_batchnorm:
        for parent in list(m.modules()):
            for child in parent.children():
                if isinstance(child, nn.Sequential) and len(child) >= 2 \
                        and isinstance(child[0], nn.Conv2d) and isinstance(child[1], nn.BatchNorm2d):
                    child[0] = fuse_conv_bn_eval(child[0], child[1])
                    child[1] = nn.Identity()
    return replace_transposed_convs(m, up2=pixel_shuffle_up)
