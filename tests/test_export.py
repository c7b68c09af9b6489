"""ONNX export, int8 quantization and its accuracy gate, fp16, the ORT session wrapper and `predict`,
on tiny random-init models.

Runs are built from the registry (`get_experiment`) at base width 4 (UNets at 32 px) with seeded
random weights; data-dependent paths use the synthetic fixture tree (tests/fixtures.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from exports.onnx_export import FP16_TOLERANCE, OPSET, build_metadata, graph_specs
from exports.session import OrtSession
from harness.errors import UserError
from harness.export_data import dataset_info
from harness.export_stage import export_run
from harness.run_folder import load_run, save_weights
from tests import helpers
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
KINDS = ["unet-mp-tr-bce", "unet-mp-tr-dice", "unet-sc-tr-bce", "unet-sc-up-dice", "cvae-mnist", "cvae-cifar10"]
INT8_KIND = "unet-mp-tr-bce"
FP16_KINDS = (INT8_KIND, "cvae-mnist")
TOL = 1e-4


def make_run(root: Path, name: str, seed: int = 0) -> Path:
    """A tiny random-init run of `name` under root, with non-trivial BatchNorm statistics."""
    return helpers.make_run(root / name, tiny_config(name), seed=seed, random_batchnorm=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_root):
    """name -> (run_dir, export report); each kind is exported once, on first use."""
    root = tmp_path_factory.mktemp("runs")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str):
        if name not in cache:
            run = make_run(root, name)
            q = "int8" if name == INT8_KIND else None
            cache[name] = (run, export_run(run, quantize=q, calib_count=16, data_root=data_root,
                                           fp16=name in FP16_KINDS))
        return cache[name]

    return get


def _own_inputs(cfg, kind: str, b: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "segmentation":
        s = cfg.image_size
        return {"image": torch.randn(b, 3, s, s, generator=g)}
    c, s, k, lat = cfg.model["in_channels"], cfg.model["image_size"], cfg.num_classes, cfg.model["latent_dim"]
    labels = torch.randint(0, k, (b,), generator=g)
    if kind == "decoder":
        return {"z": torch.randn(b, lat, generator=g), "label": labels}
    return {"image": torch.rand(b, c, s, s, generator=g), "label": labels,
            "new_label": (labels + 1 + torch.randint(0, k - 1, (b,), generator=g)) % k,
            "eps": torch.randn(b, lat, generator=g)}


# ---------------------------------------------------------------------------- export + parity
@pytest.mark.parametrize("name", KINDS)
def test_export_parity_and_metadata(exported, name):
    run, report = exported(name)
    out = run / "onnx"
    cfg, model = load_run(run)
    specs = graph_specs(cfg, model)
    expected_files = {s.file for s in specs} | ({"model.int8.onnx"} if name == INT8_KIND else set()) \
        | ({specs[0].file.replace(".onnx", ".fp16.onnx")} if name in FP16_KINDS else set())
    assert set(report["files"]) == expected_files
    assert sorted(p.name for p in out.iterdir()) == sorted(expected_files | {"export.json"})
    assert not list(out.glob("*.data")), "weights must be embedded in the .onnx"
    assert not [p for p in run.iterdir() if p.name.startswith(".onnx.tmp")], "temp folder left behind"
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk["opset"] == OPSET and on_disk["tolerance"] == TOL
    assert on_disk["parity_provider"] == "CPUExecutionProvider"
    for spec in specs:
        # the exporter's own figures, on held-out data
        assert set(report["parity"][spec.file]) >= {"batch_1", "batch_7"}
        scales = report["parity_scale"][spec.file]
        assert set(scales) == set(report["parity"][spec.file]) and all(v >= 1.0 for v in scales.values())
        assert all(v <= TOL * scales[k] for k, v in report["parity"][spec.file].items())
        assert report["parity_inputs"][spec.file] == "val split"
        # our own inputs, two batch sizes
        sess = OrtSession(out / spec.file, threads=1)
        for b, seed in ((1, 11), (7, 12)):
            inp = _own_inputs(cfg, spec.kind, b, seed)
            with torch.no_grad():  # against the TRAINED module, not the rewritten one that was exported
                ref = spec.ref(*[inp[n] for n in spec.input_names]).numpy()
            got = sess(**{k: v.numpy() for k, v in inp.items()})
            assert got.shape == ref.shape
            assert float(np.abs(got - ref).max()) <= TOL
        # metadata round-trip: raw strings exactly as built, decoded values as meant
        proto = onnx.load(str(out / spec.file))
        assert proto.opset_import[0].version == OPSET or any(o.version == OPSET and o.domain == ""
                                                             for o in proto.opset_import)
        raw = {p.key: p.value for p in proto.metadata_props}
        assert raw == build_metadata(cfg, spec, dataset_info(cfg))
        md = sess.metadata
        assert md["experiment"] == name and md["config_hash"] == cfg.hash() and md["graph"] == spec.kind
        assert md["precision"] == "fp32" and md["onnx_opset"] == OPSET and md["torch_version"] == torch.__version__
        assert md["variant"]["loss"] == cfg.loss and md["variant"]["task"] == cfg.task
        assert isinstance(md["class_names"], list) and md["class_names"]
        assert md["image_size"] == (cfg.image_size if cfg.task == "segmentation" else cfg.model["image_size"])
        assert all(isinstance(v, str) for v in raw.values())
        if cfg.task == "segmentation":
            assert md["mean"] == [0.485, 0.456, 0.406] and md["std"] == [0.229, 0.224, 0.225]
            assert md["size_multiple"] == 16 and md["variant"]["down"] == cfg.model["down"]
            assert md["class_names"] == ["background", "pet"] and "trimap" in md["mask_rule"]
            assert list(sess.inputs) == ["image"] and sess.output_names == ["logits"]
        else:
            assert md["normalization"] == "[0,1]" and md["latent_dim"] == cfg.model["latent_dim"]
            assert md["num_classes"] == 10 and len(md["class_names"]) == 10
            assert sess.output_names == ["generated"]
            assert list(sess.inputs) == spec.input_names
            assert all(n.op_type not in ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike")
                       for n in proto.graph.node), "noise must be an input, not a random op"
        assert not [v for v in raw.values() if str(Path.home()) in v or str(run) in v]  # no local paths


def test_unet_dynamic_size(exported):
    run, _ = exported("unet-sc-up-dice")
    cfg, model = load_run(run)
    sess = OrtSession(run / "onnx" / "model.onnx", threads=1)
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess(image=x.numpy())
    assert got.shape == (2, 1, 48, 64) and float(np.abs(got - ref).max()) <= TOL


# ---------------------------------------------------------------------------- int8
def test_int8_unet(exported):
    run, report = exported(INT8_KIND)
    q = report["int8"]
    assert q["file"] == "model.int8.onnx" and (run / "onnx" / "model.int8.onnx").is_file()
    assert q["dice_delta"] == pytest.approx(q["dice_int8"] - q["dice_fp32"])
    # the gate: int8 Dice against the fp32 graph's Dice on the same val images, MLPerf's 99% by default
    gate = report["accuracy_gate"]
    assert gate["metric"] == "dice" and gate["target"] == 0.99 and gate["eval_source"] == "val split"
    assert (gate["value"], gate["reference"]) == (q["dice_int8"], q["dice_fp32"])
    assert gate["ratio"] == pytest.approx(q["dice_int8"] / q["dice_fp32"])
    assert gate["pass"] == (gate["ratio"] >= 0.99) and gate["pass"] == (not gate["reasons"])
    assert q["calibration_source"] == "train split" and 0 < q["calibration_count"] <= 16
    # with the DepthToSpace rewrite no op is left computing in fp32 (ConvTranspose would be)
    assert q["fp32_ops"] == {} and q["int8_ops"].get("QLinearConv", 0) > 0
    sess = OrtSession(run / "onnx" / "model.int8.onnx", threads=1)
    assert sess.metadata["precision"] == "int8" and sess.metadata["experiment"] == INT8_KIND
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert sess(image=x).shape == (3, 1, 32, 32)
    q_nodes = {n.op_type for n in onnx.load(str(run / "onnx" / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= q_nodes


@pytest.mark.parametrize("name", [k for k in KINDS if k.startswith("unet")])
def test_inference_form_is_the_same_function(tmp_path, name):
    from models.unet import PixelShuffleUp, inference_form

    cfg, model = load_run(make_run(tmp_path, name, seed=4))
    fused = inference_form(model)
    kinds = {type(m) for m in fused.modules()}
    assert torch.nn.BatchNorm2d not in kinds and torch.nn.ConvTranspose2d not in kinds
    assert (PixelShuffleUp in kinds) == (cfg.model["up"] == "transpose")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the trained model must be untouched"
    x = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((fused(x) - model(x)).abs().max()) <= 1e-5


def test_export_rewrites_are_options(exported, tmp_path, data_root):
    from harness.export_stage import INT8_SOURCE
    from harness.cli import main

    run, report = exported(INT8_KIND)

    def ops(path):
        return {n.op_type for n in onnx.load(str(path)).graph.node}

    # fp32 keeps ConvTranspose (faster there); the int8 graph is made from the DepthToSpace form
    assert "ConvTranspose" in ops(run / "onnx" / "model.onnx")
    assert "BatchNormalization" not in ops(run / "onnx" / "model.onnx")
    assert set(report["graph_rewrites"]) == {"fold_batchnorm"}
    assert set(report["int8"]["graph_rewrites"]) == {"fold_batchnorm", "pixel_shuffle_up"}
    assert "DepthToSpace" in ops(run / "onnx" / "model.int8.onnx")
    assert "ConvTranspose" not in ops(run / "onnx" / "model.int8.onnx")
    assert all(v <= TOL for v in report["parity"][INT8_SOURCE].values())  # the quantized source was checked
    assert not (run / "onnx" / INT8_SOURCE).exists()                      # ... and not shipped
    out = tmp_path / "plain"
    assert main(["export", str(run), "--out", str(out), "--data-root", str(data_root), "--quantize", "int8",
                 "--calib-count", "8", "--no-fold-batchnorm", "--keep-convtranspose"]) == 0
    doc = json.loads((out / "export.json").read_text())
    assert doc["graph_rewrites"] == {} and doc["int8"]["graph_rewrites"] == {}
    assert doc["int8"]["fp32_ops"].get("ConvTranspose") == 4  # what the rewrite removes: no int8 kernel in ORT
    assert OrtSession(out / "model.onnx", threads=1).metadata["graph_rewrites"] == {}


@pytest.mark.parametrize("name", FP16_KINDS)
def test_fp16_graph_parity_on_the_cpu_provider(exported, name):
    """--fp16: fp16 weights and compute, float32 I/O, checked against PyTorch fp32 within FP16_TOLERANCE
    x scale on ORT's CPU provider; our own inputs agree within the same bound and differ from fp32's
    (a graph that were not fp16 at all would match to ~1e-6)."""
    run, report = exported(name)
    cfg, model = load_run(run)
    spec = graph_specs(cfg, model)[0]
    fp16_file = spec.file.replace(".onnx", ".fp16.onnx")
    entry = report["files"][fp16_file]
    assert entry["precision"] == "fp16" and entry["from"] == spec.file and entry["tolerance"] == FP16_TOLERANCE
    assert set(report["parity"][fp16_file]) == set(report["parity"][spec.file])
    assert all(v <= FP16_TOLERANCE * report["parity_scale"][fp16_file][k] for k, v in report["parity"][fp16_file].items())
    proto = onnx.load(str(run / "onnx" / fp16_file))
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer) > 0
    sess = OrtSession(run / "onnx" / fp16_file, threads=1, device="cpu")
    assert sess.metadata["precision"] == "fp16" and sess.providers == ["CPUExecutionProvider"]
    assert all(dtype == np.float32 for _, dtype in sess.outputs.values())
    inp = _own_inputs(cfg, spec.kind, 3, seed=21)
    with torch.no_grad():
        ref = spec.ref(*[inp[n] for n in spec.input_names]).numpy()
    got = sess(**{k: v.numpy() for k, v in inp.items()})
    err = float(np.abs(got - ref).max())
    assert got.dtype == np.float32 and 1e-6 < err <= FP16_TOLERANCE * max(1.0, float(np.abs(ref).max()))


def _shift_output(path: Path, by: float) -> None:
    """Make a graph wrong on purpose: its output minus `by` (a UNet then predicts no pet at all)."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g, out = model.graph, model.graph.output[0].name
    for node in g.node:
        node.output[:] = [o + "_raw" if o == out else o for o in node.output]
    g.initializer.append(numpy_helper.from_array(np.array(by, np.float32), "shift_by"))
    g.node.append(helper.make_node("Sub", [out + "_raw", "shift_by"], [out]))
    onnx.save(model, str(path))


def test_failing_int8_graph_is_caught_and_strict_refuses_it(tmp_path, data_root, monkeypatch, capsys):
    import exports.quantize as qz
    from harness.cli import main

    real = qz.quantize_int8
    monkeypatch.setattr(qz, "quantize_int8", lambda fp32, out, *a, **k: (real(fp32, out, *a, **k),
                                                                          _shift_output(out, 100.0))[0])
    run = make_run(tmp_path, INT8_KIND)
    out = tmp_path / "strict" / "onnx"
    args = ["export", str(run), "--out", str(out), "--data-root", str(data_root), "--quantize", "int8",
            "--calib-count", "8"]
    assert main([*args, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "model.int8.onnx fails the accuracy gate on dice" in err and "--strict refuses" in err
    assert not out.exists() and list(out.parent.iterdir()) == []  # nothing written, no temp folder
    assert main(args) == 0  # without --strict: written, and the failure is on record
    printed = capsys.readouterr().out
    gate = json.loads((out / "export.json").read_text())["accuracy_gate"]
    assert gate["pass"] is False and gate["value"] == 0.0 and gate["reference"] > 0 and gate["ratio"] == 0.0
    assert "needs >= 99.0%" in gate["reasons"][0] and "accuracy gate on dice" in printed and "FAIL" in printed


def test_cvae_int8_gate_is_the_mae_bound(tmp_path, data_root):
    """CVAEs: no judge at export, so the gate is mean |int8 - fp32| of the swap outputs (same inputs, eps)."""
    from exports.accuracy_gate import DEFAULT_MAX_MAE

    run = make_run(tmp_path, "cvae-mnist")
    report = export_run(run, quantize="int8", calib_count=16, data_root=data_root, accuracy_target=0.999)
    gate, q = report["accuracy_gate"], report["int8"]
    assert gate["metric"].startswith("mae") and gate["mae"] == q["mean_abs_err"] and gate["ratio"] is None
    assert gate["target"] == 0.999 and gate["max_mae"] == DEFAULT_MAX_MAE and gate["eval_source"] == "val split"
    assert gate["pass"] == (q["mean_abs_err"] <= DEFAULT_MAX_MAE)
    with pytest.raises(UserError, match="accuracy_target"):
        export_run(run, quantize="int8", data_root=data_root, accuracy_target=1.5)


def _ops(path) -> dict[str, int]:
    from collections import Counter
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def test_cvae_int8_graph_is_made_without_convtranspose(tmp_path, data_root):
    """The CVAE's int8 swap graph is quantized from the SubpixelUp4 form (its decoder's two
    ConvTranspose2d(4, 2, 1) as Conv + DepthToSpace: ORT has no int8 ConvTranspose); the shipped fp32
    graphs keep their ConvTranspose. The rewritten source is parity-checked against the trained model and
    not shipped; export.json and the int8 graph's metadata name the rewrite. --int8-up4 picks the
    form; --keep-convtranspose turns it off."""
    from exports.onnx_export import REWRITES
    from harness.cli import main
    from harness.export_stage import int8_source

    run = make_run(tmp_path, "cvae-mnist", seed=2)
    out = run / "onnx"
    report = export_run(run, quantize="int8", calib_count=16, data_root=data_root, threads=1)
    source = int8_source("swap.onnx")
    assert source == "swap.int8-source.onnx" and not (out / source).exists()
    assert set(report["files"]) == {"swap.onnx", "decoder.onnx", "swap.int8.onnx"}
    for f in ("swap.onnx", "decoder.onnx"):  # shipped fp32: as before, ConvTranspose kept
        assert _ops(out / f).get("ConvTranspose") == 2 and "DepthToSpace" not in _ops(out / f)
        assert OrtSession(out / f, threads=1).metadata["graph_rewrites"] == {}
    assert report["graph_rewrites"] == {}
    q = report["int8"]
    assert q["from"] == source and q["graph_rewrites"] == {"subpixel_up4": REWRITES["subpixel_up4"]}
    assert set(report["parity"][source]) >= {"batch_1", "batch_7"}
    assert all(v <= TOL * report["parity_scale"][source][k] for k, v in report["parity"][source].items())
    int8_ops = _ops(out / "swap.int8.onnx")
    assert "ConvTranspose" not in int8_ops and int8_ops.get("DepthToSpace") == 2
    assert "ConvTranspose" not in q["fp32_ops"] and q["int8_ops"].get("QLinearConv", 0) >= 6  # 4 + the 2 rewritten
    assert OrtSession(out / "swap.int8.onnx", threads=1).metadata["graph_rewrites"] == {"subpixel_up4": REWRITES["subpixel_up4"]}
    # as ORT runs it: each DepthToSpace moves 8-bit data (QLinearConv -> [layout Transpose] -> DepthToSpace ->
    # QLinearMul), no Dequantize/Quantize pair around it
    from exports.quantize import optimized_graph
    g = optimized_graph(out / "swap.int8.onnx").graph
    producer = {o: n for n in g.node for o in n.output}
    readers = {i: n for n in g.node for i in n.input}
    d2s = [n for n in g.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == 2
    for n in d2s:
        p = producer[n.input[0]]
        while p.op_type == "Transpose":
            p = producer[p.input[0]]
        assert p.op_type == "QLinearConv" and readers[n.output[0]].op_type.startswith("QLinear"), (p.op_type, n.name)
    # the per-layer errors join the rewritten convs to the replaced modules' names
    assert {"cvae.dec_blocks.1.conv", "cvae.dec_blocks.2.conv"} <= {r["module"] for r in q["layer_errors"]}
    assert report["accuracy_gate"]["pass"] == (q["mean_abs_err"] <= report["accuracy_gate"]["max_mae"])

    other = tmp_path / "conv2x2"
    assert main(["export", str(run), "--out", str(other), "--data-root", str(data_root), "--quantize", "int8",
                 "--calib-count", "8", "--threads", "1", "--int8-up4", "conv2x2"]) == 0
    doc = json.loads((other / "export.json").read_text())
    assert set(doc["int8"]["graph_rewrites"]) == {"subpixel_up4_2x2"}
    assert all(v <= TOL * doc["parity_scale"]["swap.int8-source.onnx"][k]
               for k, v in doc["parity"]["swap.int8-source.onnx"].items())
    int8_ops = _ops(other / "swap.int8.onnx")
    assert "ConvTranspose" not in int8_ops and int8_ops.get("DepthToSpace") == 2 and "ConvTranspose" not in doc["int8"]["fp32_ops"]
    kept = tmp_path / "kept"
    assert main(["export", str(run), "--out", str(kept), "--data-root", str(data_root), "--quantize", "int8",
                 "--calib-count", "8", "--threads", "1", "--keep-convtranspose"]) == 0
    doc = json.loads((kept / "export.json").read_text())
    assert doc["int8"]["graph_rewrites"] == {} and doc["int8"]["from"] == "swap.onnx"
    assert doc["int8"]["fp32_ops"].get("ConvTranspose") == 2  # what the rewrite removes
    with pytest.raises(UserError, match="int8_up4"):
        export_run(run, quantize="int8", data_root=data_root, int8_up4="conv4x4")


# ---------------------------------------------------------------------------- session errors
def test_session_input_errors(exported):
    run, _ = exported(INT8_KIND)
    sess = OrtSession(run / "onnx" / "model.onnx", threads=1)
    good = np.zeros((1, 3, 32, 32), np.float32)
    assert sess(image=good).shape == (1, 1, 32, 32)
    with pytest.raises(UserError, match=r"input 'image': expected float32, got float64"):
        sess(image=good.astype(np.float64))
    with pytest.raises(UserError, match=r"input 'image': expected rank 4"):
        sess(image=good[0])
    with pytest.raises(UserError, match=r"input 'image': dimension 1 \(channels\) must be 3, got 4"):
        sess(image=np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(UserError, match=r"input 'image': height 40 is not a multiple of 16"):
        sess(image=np.zeros((1, 3, 40, 32), np.float32))
    with pytest.raises(UserError, match=r"missing input\(s\) \['image'\]"):
        sess.run({})
    with pytest.raises(UserError, match=r"unknown input\(s\) \['img'\]"):
        sess.run({"img": good})


def test_session_label_and_batch_errors(exported):
    run, _ = exported("cvae-mnist")
    sess = OrtSession(run / "onnx" / "swap.onnx", threads=1)
    n, lat = 2, sess.metadata["latent_dim"]
    feed = {"image": np.zeros((n, 1, 28, 28), np.float32), "label": np.array([0, 9]),
            "new_label": np.array([1, 2]), "eps": np.zeros((n, lat), np.float32)}
    assert sess.run(feed)["generated"].shape == (n, 1, 28, 28)
    with pytest.raises(UserError, match=r"input 'new_label': label 10 is outside \[0, 10\)"):
        sess.run({**feed, "new_label": np.array([1, 10])})
    with pytest.raises(UserError, match=r"input 'label': label -1 is outside \[0, 10\)"):
        sess.run({**feed, "label": np.array([-1, 3])})
    with pytest.raises(UserError, match=r"input 'label': expected int64, got int32"):
        sess.run({**feed, "label": np.array([1, 3], np.int32)})
    with pytest.raises(UserError, match=r"input 'eps': dimension 1 \(latent_dim\) must be"):
        sess.run({**feed, "eps": np.zeros((n, lat + 1), np.float32)})
    with pytest.raises(UserError, match=r"input 'eps': dimension 0 \(batch\) is 3 but input 'image' has 2"):
        sess.run({**feed, "eps": np.zeros((3, lat), np.float32)})
    with pytest.raises(UserError, match=r"input 'image': dimension 2 \(height\) must be 28"):
        sess.run({**feed, "image": np.zeros((n, 1, 32, 32), np.float32)})


def test_session_load_errors(exported, tmp_path):
    run, _ = exported(INT8_KIND)
    src = run / "onnx" / "model.onnx"
    with pytest.raises(UserError, match="ONNX model not found: .*nope.onnx"):
        OrtSession(tmp_path / "nope.onnx")
    data = src.read_bytes()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="trunc.onnx is not a valid ONNX model"):
        OrtSession(trunc)
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    onnx.save(onnx.load(str(src)), str(ext_dir / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=1024)
    # (onnx's default threshold: weights go out, small shape constants such as Reshape's stay inline,
    # where ORT's shape inference needs them)
    assert (ext_dir / "m.onnx.data").stat().st_size > 0
    assert OrtSession(ext_dir / "m.onnx", threads=1)(image=np.zeros((1, 3, 32, 32), np.float32)).shape[1] == 1
    (ext_dir / "m.onnx.data").unlink()
    with pytest.raises(UserError, match=r"external weights file missing: .*m\.onnx\.data"):
        OrtSession(ext_dir / "m.onnx")
    with pytest.raises(UserError, match="graph_optimization"):
        OrtSession(src, graph_optimization="max")


def test_parity_bound_scales_with_large_logits(tmp_path, data_root):
    """A confident model's logits are large; fp32 rounding grows with them, so the bound does too."""
    run = make_run(tmp_path, "unet-mp-tr-dice")
    cfg, model = load_run(run)
    with torch.no_grad():
        model.head.weight.mul_(1000.0)
        model.head.bias.fill_(5.0)
    save_weights(run, model)
    report = export_run(run, data_root=data_root, tolerance=TOL)
    parity, scales = report["parity"]["model.onnx"], report["parity_scale"]["model.onnx"]
    # scale = max(1, max |PyTorch logits|) on the val images: reproduce it for batch 1
    from harness.export_data import ExportData, inputs_for

    inputs, _ = inputs_for(cfg, "segmentation", ExportData(cfg, data_root), 7)
    with torch.no_grad():
        expect = float(load_run(run)[1](inputs["image"][:1]).abs().max())
    assert scales["batch_1"] == pytest.approx(max(1.0, expect), rel=1e-5) and scales["batch_1"] > 100
    assert all(v <= TOL * scales[k] for k, v in parity.items())


# ---------------------------------------------------------------------------- failed parity is atomic
def test_failed_parity_leaves_nothing(tmp_path, data_root, monkeypatch, capsys):
    import harness.export_stage as ox
    from harness.cli import main

    run = make_run(tmp_path, "cvae-mnist", seed=1)
    out = tmp_path / "exp" / "onnx"
    with pytest.raises(UserError, match=r"parity check failed for swap.onnx at batch \d.*tolerance 1e-12"):
        export_run(run, out_dir=out, data_root=data_root, tolerance=1e-12)
    assert not out.exists()
    assert list((tmp_path / "exp").iterdir()) == []  # no temp folder either
    # through the CLI: a parity failure after a partial write exits non-zero and leaves nothing either
    def fail_after_partial_write(cfg, specs, tmp, *a, **k):
        (tmp / "swap.onnx").write_bytes(b"partial")
        raise UserError("ONNX parity check failed for swap.onnx at batch 7: max abs difference 0.001 > tolerance")

    monkeypatch.setattr(ox, "_export_into", fail_after_partial_write)
    assert main(["export", str(run), "--out", str(out), "--data-root", str(data_root)]) == 2
    assert "parity check failed" in capsys.readouterr().err
    assert not out.exists() and list((tmp_path / "exp").iterdir()) == []


# ---------------------------------------------------------------------------- predict
def test_predict_writes_mask_and_overlay(exported, tmp_path):
    from exports.predict import predict

    run, _ = exported(INT8_KIND)
    rng = np.random.default_rng(0)
    img = tmp_path / "cat.png"
    Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(img)
    rgba = tmp_path / "dog.jpg"  # PNG data (RGBA) under a .jpg name, like Abyssinian_5
    Image.fromarray(rng.integers(0, 255, (21, 45, 4), dtype=np.uint8)).save(rgba, format="PNG")
    out = tmp_path / "pred"
    paths = predict(run / "onnx" / "model.onnx", [img, rgba], out, threads=1)
    assert [p.name for p in paths] == ["cat_mask.png", "cat_overlay.png", "dog_mask.png", "dog_overlay.png"]
    for stem, size in (("cat", (50, 37)), ("dog", (45, 21))):
        mask, over = Image.open(out / f"{stem}_mask.png"), Image.open(out / f"{stem}_overlay.png")
        assert mask.size == size and over.size == size and over.mode == "RGB" and mask.mode == "L"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="broken.png"):
        predict(run / "onnx" / "model.onnx", [bad], out)
    with pytest.raises(UserError, match="image not found: .*missing.png"):
        predict(run / "onnx" / "model.onnx", [tmp_path / "missing.png"], out)


def test_predict_rejects_cvae_graph(exported, tmp_path):
    from exports.predict import predict

    run, _ = exported("cvae-mnist")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    with pytest.raises(UserError, match="'swap' graph"):
        predict(run / "onnx" / "swap.onnx", [img], tmp_path / "o")


def test_session_and_predict_do_not_import_torch():
    code = ("import sys, exports.session, exports.predict; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
