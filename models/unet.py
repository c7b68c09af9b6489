"""UNet for binary segmentation: encoder/decoder with skip concatenation, BatchNorm and ReLU.

Variants are arguments, not copies: `down` picks MaxPool or a strided conv, `up` picks
ConvTranspose or bilinear Upsample followed by a conv. Input height and width must be
multiples of 2**depth. The output is one channel of mask logits.
"""
from __future__ import annotations

import torch
from torch import nn


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
class PixelShuffleUp(nn.Module):
    """A ConvTranspose2d(kernel 2, stride 2) as a 1x1 conv to 4*cout channels and a pixel shuffle.

    Exactly the same function. Why: ONNX Runtime's CPU EP has no int8 ConvTranspose, so in a
    quantized graph it runs fp32 between Dequantize/Quantize pairs; a Conv plus DepthToSpace (what
    pixel_shuffle exports to) runs int8 end to end: 98 vs 90 img/s for the int8 32-channel UNet at
    batch 8 on 2 cores. In fp32 the ConvTranspose graph is the faster one (33 vs 31 img/s), so the
    exporter applies this rewrite to the graph it quantizes only. (A reshape/permute shuffle, which
    exports to a 6-D Transpose, was slower than both: 78 img/s int8.)
    """

    def __init__(self, up: nn.ConvTranspose2d):
        super().__init__()
        if up.kernel_size != (2, 2) or up.stride != (2, 2) or up.padding != (0, 0) or up.groups != 1 \
                or up.dilation != (1, 1) or up.output_padding != (0, 0):
            raise ValueError("PixelShuffleUp rewrites ConvTranspose2d(kernel_size=2, stride=2) only")
        cin, cout = up.in_channels, up.out_channels
        self.out_channels = cout
        self.conv = nn.Conv2d(cin, 4 * cout, 1, bias=up.bias is not None)
        with torch.no_grad():  # weight [cin, cout, 2, 2] -> [cout*4 (cout, dy, dx), cin, 1, 1]
            self.conv.weight.copy_(up.weight.permute(1, 2, 3, 0).reshape(4 * cout, cin, 1, 1))
            if up.bias is not None:
                self.conv.bias.copy_(up.bias.repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(self.conv(x), 2)  # channel c*4 + dy*2 + dx -> (c, 2h+dy, 2w+dx)


def inference_form(model: UNet, fold_batchnorm: bool = True, pixel_shuffle_up: bool = True) -> UNet:
    """An eval-mode copy computing the same function with fewer, quantization-friendly ops.

    fold_batchnorm: each Conv -> BatchNorm pair becomes one Conv (running statistics folded in).
    pixel_shuffle_up: each ConvTranspose2d(2, stride 2) becomes a PixelShuffleUp.
    The trained model is left untouched.
    """
    import copy
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if fold_batchnorm and isinstance(child, nn.Sequential) and len(child) >= 2 \
                    and isinstance(child[0], nn.Conv2d) and isinstance(child[1], nn.BatchNorm2d):
                child[0] = fuse_conv_bn_eval(child[0], child[1])
                child[1] = nn.Identity()
            elif pixel_shuffle_up and isinstance(child, nn.ConvTranspose2d) and child.kernel_size == (2, 2) \
                    and child.stride == (2, 2):
                setattr(parent, name, PixelShuffleUp(child))
    return m
