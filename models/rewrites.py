"""Function-preserving rewrites of transposed convolutions, shared by the UNet and the CVAE.

Why: ONNX Runtime's CPU EP has no int8 ConvTranspose, so in a quantized (QDQ) graph each one runs in
fp32 between Dequantize/Quantize pairs. A Conv to 4x the channels followed by a pixel shuffle (ONNX
DepthToSpace) computes exactly the same function and runs int8 end to end. The exporter applies these
to the graph it quantizes only (exports.onnx_export.graph_specs(pixel_shuffle_up=True)): in fp32 the
ConvTranspose graphs are the faster ones.

  PixelShuffleUp  ConvTranspose2d(kernel 2, stride 2)             -> 1x1 Conv + pixel shuffle   (UNet)
  SubpixelUp4     ConvTranspose2d(kernel 4, stride 2, padding 1)  -> 3x3 (or 2x2) Conv + pixel shuffle (CVAE)
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["PixelShuffleUp", "SubpixelUp4", "UP4_FORMS", "DEFAULT_UP4", "replace_transposed_convs",
           "is_up2", "is_up4"]

UP4_FORMS = ("conv3x3", "conv2x2")
DEFAULT_UP4 = "conv3x3"


def _plain(up: nn.ConvTranspose2d) -> bool:
    return up.groups == 1 and up.dilation == (1, 1) and up.output_padding == (0, 0)


def is_up2(m: nn.Module) -> bool:
    """ConvTranspose2d(kernel 2, stride 2, padding 0): what PixelShuffleUp rewrites."""
    return isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (2, 2) and m.stride == (2, 2) \
        and m.padding == (0, 0) and _plain(m)


def is_up4(m: nn.Module) -> bool:
    """ConvTranspose2d(kernel 4, stride 2, padding 1): what SubpixelUp4 rewrites."""
    return isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (4, 4) and m.stride == (2, 2) \
        and m.padding == (1, 1) and _plain(m)


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
        if not is_up2(up):
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


# The output pixel (2m+a, 2n+b) of ConvTranspose2d(4, stride 2, padding 1) reads input rows m-1, m (a=0)
# or m, m+1 (a=1) (columns alike). In a 2x2 window whose tap t in {0, 1} reads row m + a + t - 1 (a
# padding-1 Conv's output row m + a), tap t holds the transposed kernel's row 3 - a - 2t:
#   a=0: t=0 (row m-1) <- kh 3, t=1 (row m) <- kh 1;   a=1: t=0 (row m) <- kh 2, t=1 (row m+1) <- kh 0.
# In a 3x3 window centred on row m (tap u reads row m + u - 1) the same taps sit at u = t + a.
def _phase_kernel(w: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """[cout, cin, 2, 2]: the 2x2 kernel of output phase (a, b) from a ConvTranspose weight [cin, cout, 4, 4]."""
    idx_h = torch.tensor([3 - a, 1 - a])  # t = 0, 1 -> kh = 3 - a - 2t
    idx_w = torch.tensor([3 - b, 1 - b])
    return w[:, :, idx_h][:, :, :, idx_w].permute(1, 0, 2, 3)


class SubpixelUp4(nn.Conv2d):
    """A ConvTranspose2d(kernel 4, stride 2, padding 1) as ONE Conv2d to 4*cout channels and a pixel shuffle.

    Exactly the same function (any input size, with or without bias), for the same reason as
    PixelShuffleUp: the int8 graph then holds no fp32 ConvTranspose (the CVAE decoder's two took ~55%
    of its int8 graph's time between Dequantize/Quantize pairs). Each output phase (a, b) of the
    stride-2 transposed conv is a 2x2 conv of the input; the forms differ in how the four are packed:

      conv3x3  one Conv2d(cin, 4*cout, 3, padding=1), each phase's 2x2 taps placed in the 3x3 window
               (the rest zero): 2.25x the ConvTranspose's MACs, then pixel_shuffle (DepthToSpace).
      conv2x2  one Conv2d(cin, 4*cout, 2, padding=1) with output (H+1)x(W+1); phase (a, b) is its
               channel block cropped to rows a..a+H-1, cols b..b+W-1: the ConvTranspose's MACs, plus
               four Slices and a Concat before the pixel shuffle.

    It IS the Conv2d (a subclass, not a wrapper) so that the exporter names its Conv and DepthToSpace
    after the module it replaces (e.g. `dec_blocks.1.conv`, weight `dec_blocks.1.conv.weight`): the
    profile and the per-layer int8 errors join them to the fp32 graph's ConvTranspose layer.
    """

    def __init__(self, up: nn.ConvTranspose2d, form: str = DEFAULT_UP4):
        if not is_up4(up):
            raise ValueError("SubpixelUp4 rewrites ConvTranspose2d(kernel_size=4, stride=2, padding=1) only "
                             "(groups 1, dilation 1, output_padding 0)")
        if form not in UP4_FORMS:
            raise ValueError(f"form must be one of {', '.join(UP4_FORMS)}, got {form!r}")
        cin, cout = up.in_channels, up.out_channels
        k = 3 if form == "conv3x3" else 2
        super().__init__(cin, 4 * cout, k, padding=1, bias=up.bias is not None,
                         device=up.weight.device, dtype=up.weight.dtype)
        self.form, self.up_channels = form, cout
        w = up.weight.detach()
        phases = [(a, b) for a in (0, 1) for b in (0, 1)]  # phase p = a*2 + b
        with torch.no_grad():
            if form == "conv3x3":  # channel c*4 + p (pixel_shuffle order); phase (a, b)'s taps at rows a.., cols b..
                weight = torch.zeros(cout, 4, cin, 3, 3, dtype=w.dtype, device=w.device)
                for p, (a, b) in enumerate(phases):
                    weight[:, p, :, a:a + 2, b:b + 2] = _phase_kernel(w, a, b)
                self.weight.copy_(weight.reshape(4 * cout, cin, 3, 3))
                if up.bias is not None:
                    self.bias.copy_(up.bias.repeat_interleave(4))
            else:  # channel p*cout + c: one contiguous block per phase, cropped in forward
                self.weight.copy_(torch.cat([_phase_kernel(w, a, b) for a, b in phases]))
                if up.bias is not None:
                    self.bias.copy_(up.bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.form == "conv2x2":  # [N, 4*cout, H+1, W+1] -> each phase's crop, interleaved to c*4 + p
            h, w, c = x.shape[-2], x.shape[-1], self.up_channels
            y = torch.stack([y[:, p * c:(p + 1) * c, a:a + h, b:b + w]
                             for p, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))], dim=2).flatten(1, 2)
        return nn.functional.pixel_shuffle(y, 2)  # channel c*4 + a*2 + b -> (c, 2m+a, 2n+b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form!r}, up_channels={self.up_channels}"


def replace_transposed_convs(model: nn.Module, up2: bool = False, up4: str | None = None) -> nn.Module:
    """In place: each ConvTranspose2d(2, stride 2) becomes a PixelShuffleUp (up2=True) and each
    ConvTranspose2d(4, stride 2, padding 1) a SubpixelUp4 of form `up4` (None: kept). Returns model."""
    if up4 is not None and up4 not in UP4_FORMS:
        raise ValueError(f"up4 must be one of {', '.join(UP4_FORMS)} or None, got {up4!r}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if up2 and is_up2(child):
                setattr(parent, name, PixelShuffleUp(child))
            elif up4 is not None and is_up4(child):
                setattr(parent, name, SubpixelUp4(child, up4))
    return model
