"""models.rewrites: ConvTranspose2d layers as Conv + pixel shuffle, exactly the same function.

SubpixelUp4 (the CVAE decoder's ConvTranspose2d(4, stride 2, padding 1)) in both forms against the
layer it replaces on random weights and inputs (odd sizes, with and without bias), the rewritten CVAE
against the trained one (swap and decoder graphs), and the exported ONNX form (Conv + DepthToSpace,
named after the replaced module). The int8 export of a CVAE is tested in test_export.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.rewrites import DEFAULT_UP4, UP4_FORMS, PixelShuffleUp, SubpixelUp4, replace_transposed_convs

SHAPES = [  # cin, cout, H, W, bias
    (1, 1, 1, 1, True), (3, 5, 4, 4, True), (2, 3, 5, 7, False), (8, 4, 6, 3, True), (16, 8, 7, 7, False),
    (5, 2, 2, 9, True),
]


@pytest.mark.parametrize("form", UP4_FORMS)
@pytest.mark.parametrize("cin,cout,h,w,bias", SHAPES)
def test_subpixel_up4_is_the_transposed_conv(form, cin, cout, h, w, bias):
    g = torch.Generator().manual_seed(cin * 100 + cout * 10 + h + w)
    up = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)
    with torch.no_grad():
        up.weight.copy_(torch.randn(up.weight.shape, generator=g))
        if bias:
            up.bias.copy_(torch.randn(cout, generator=g))
    x = torch.randn(3, cin, h, w, generator=g)
    m = SubpixelUp4(up, form)
    assert isinstance(m, nn.Conv2d) and m.out_channels == 4 * cout and m.in_channels == cin
    assert m.kernel_size == ((3, 3) if form == "conv3x3" else (2, 2)) and m.padding == (1, 1)
    assert (m.bias is None) == (not bias)
    with torch.no_grad():
        want, got = up(x), m(x)
    assert got.shape == want.shape == (3, cout, 2 * h, 2 * w)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())


def test_subpixel_up4_weights_and_macs():
    """conv3x3: per output channel, only each phase's 2x2 taps are non-zero (4 of 9: 2.25x the MACs);
    conv2x2: the ConvTranspose's own MACs (16 taps per cin x cout, spread over 4 phases of 4)."""
    up = nn.ConvTranspose2d(3, 2, 4, 2, 1)
    w3 = SubpixelUp4(up, "conv3x3").weight.detach()
    assert w3.shape == (8, 3, 3, 3) and int((w3 != 0).sum()) == 8 * 3 * 4
    nonzero = (w3 != 0).any(dim=1).view(2, 4, 3, 3)  # [cout, phase, u, v]
    for p, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        mask = torch.zeros(3, 3, dtype=torch.bool)
        mask[a:a + 2, b:b + 2] = True
        assert torch.equal(nonzero[:, p], mask.expand(2, 3, 3))
    w2 = SubpixelUp4(up, "conv2x2").weight.detach()
    assert w2.shape == (8, 3, 2, 2) and sorted(w2.flatten().tolist()) == sorted(up.weight.detach().flatten().tolist())


def test_subpixel_up4_refuses_other_transposed_convs():
    for bad in (nn.ConvTranspose2d(2, 2, 4, 2, 0), nn.ConvTranspose2d(2, 2, 2, 2), nn.ConvTranspose2d(2, 2, 4, 1, 1),
                nn.ConvTranspose2d(2, 2, 4, 2, 1, output_padding=1), nn.ConvTranspose2d(2, 2, 4, 2, 1, groups=2)):
        with pytest.raises(ValueError, match="SubpixelUp4 rewrites"):
            SubpixelUp4(bad)
    with pytest.raises(ValueError, match="form"):
        SubpixelUp4(nn.ConvTranspose2d(2, 2, 4, 2, 1), "conv5x5")
    with pytest.raises(ValueError, match="PixelShuffleUp rewrites"):
        PixelShuffleUp(nn.ConvTranspose2d(2, 2, 4, 2, 1))


def test_replace_transposed_convs_picks_by_shape():
    net = nn.Sequential(nn.ConvTranspose2d(2, 3, 2, 2), nn.ConvTranspose2d(3, 3, 4, 2, 1),
                        nn.ConvTranspose2d(3, 2, 3, 1, 1))  # the last one is neither: kept
    x = torch.randn(1, 2, 3, 5)
    with torch.no_grad():
        want = net(x)
        kinds = [type(m) for m in replace_transposed_convs(net, up2=True, up4="conv2x2")]
        got = net(x)
    assert kinds == [PixelShuffleUp, SubpixelUp4, nn.ConvTranspose2d]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="up4"):
        replace_transposed_convs(net, up4="conv3")


def test_pixel_shuffle_up_is_still_importable_from_unet():
    import models.unet

    assert models.unet.PixelShuffleUp is PixelShuffleUp


# ---------------------------------------------------------------------------- the CVAE
def _cvae(seed: int = 0):
    from models.cvae import CVAE

    torch.manual_seed(seed)
    return CVAE(in_channels=1, image_size=12, num_classes=4, latent_dim=3, hidden_channels=4, embed_dim=5).eval()


@pytest.mark.parametrize("form", UP4_FORMS)
def test_cvae_inference_form_is_the_same_function(form):
    from models.cvae import Decoder, LabelSwap, inference_form

    model = _cvae()
    fast = inference_form(model, form)
    assert not fast.training
    assert [type(b.conv) for b in fast.dec_blocks] == [nn.Conv2d, SubpixelUp4, SubpixelUp4]
    assert all(b.conv.form == form for b in fast.dec_blocks[1:])
    assert [type(b.conv) for b in model.dec_blocks] == [nn.Conv2d, nn.ConvTranspose2d, nn.ConvTranspose2d], \
        "the trained model must be untouched"
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(5, 1, 12, 12, generator=g), torch.randint(0, 4, (5,), generator=g)
    new_y, eps, z = (y + 1) % 4, torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    with torch.no_grad():
        for a, b in ((LabelSwap(fast)(x, y, new_y, eps), LabelSwap(model)(x, y, new_y, eps)),
                     (Decoder(fast)(z, y), Decoder(model)(z, y))):
            assert a.shape == (5, 1, 12, 12) and float((a - b).abs().max()) <= 1e-5
    assert inference_form(model, None).dec_blocks[1].conv.__class__ is nn.ConvTranspose2d


def test_cvae_graph_specs_rewrite_only_when_asked():
    from exports.onnx_export import REWRITES, UP4_REWRITES, graph_specs
    from harness.errors import UserError
    from tests.helpers import tiny_config

    cfg = tiny_config("cvae-mnist")
    model = _cvae()  # the specs do not read the model's size from cfg: any CVAE will do
    plain = graph_specs(cfg, model)
    assert [s.rewrites for s in plain] == [(), ()]
    assert not any(isinstance(m, SubpixelUp4) for s in plain for m in s.module.modules())
    for form in UP4_FORMS:
        specs = graph_specs(cfg, model, pixel_shuffle_up=True, convtranspose4=form)
        assert [s.file for s in specs] == ["swap.onnx", "decoder.onnx"]
        for s in specs:
            assert s.rewrites == (UP4_REWRITES[form],) and UP4_REWRITES[form] in REWRITES
            assert sum(isinstance(m, SubpixelUp4) for m in s.module.modules()) == 2
            assert not any(isinstance(m, SubpixelUp4) for m in s.ref.modules())  # parity against the trained model
    assert graph_specs(cfg, model, pixel_shuffle_up=True)[0].rewrites == (UP4_REWRITES[DEFAULT_UP4],)
    with pytest.raises(UserError, match="convtranspose4"):
        graph_specs(cfg, model, pixel_shuffle_up=True, convtranspose4="conv4x4")


@pytest.mark.parametrize("form", UP4_FORMS)
def test_exported_subpixel_up4_is_conv_and_depth_to_space_under_the_replaced_module(tmp_path, form):
    """The ONNX form: no ConvTranspose; a Conv and a DepthToSpace whose name scope is the replaced module
    (what the profile and the per-layer int8 errors join on); ORT computes the ConvTranspose's function."""
    import numpy as np
    import onnx

    from exports.layer_error import module_of
    from exports.onnx_export import GraphSpec, export_graph
    from exports.session import OrtSession
    from torch.export import Dim

    class Block(nn.Module):
        def __init__(self, up):
            super().__init__()
            self.conv = up

        def forward(self, x):
            return torch.relu(self.conv(x))

    up = nn.ConvTranspose2d(3, 2, 4, 2, 1)
    block = Block(SubpixelUp4(up, form)).eval()
    spec = GraphSpec("up.onnx", "swap", block, ["x"], "y", ({0: Dim("batch", min=1)},), {"x": "x"}, "y",
                     reference=Block(up).eval())
    export_graph(spec, (torch.randn(2, 3, 5, 6),), tmp_path / "up.onnx", {})
    nodes = onnx.load(str(tmp_path / "up.onnx")).graph.node
    ops = {n.op_type for n in nodes}
    assert "ConvTranspose" not in ops and {"Conv", "DepthToSpace"} <= ops
    assert {module_of(n) for n in nodes if n.op_type in ("Conv", "DepthToSpace")} == {"conv"}
    x = torch.randn(3, 3, 5, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = spec.ref(x).numpy()
    got = OrtSession(tmp_path / "up.onnx", threads=1, device="cpu").run({"x": x.numpy()})["y"]
    assert float(np.abs(got - want).max()) <= 1e-5
