"""torch-int8 (PT2E, x86 inductor quantizer, compiled with freezing) on tiny runs: outputs close to
fp32 and the accuracy gate passes; it is calibrated on the class-stratified set ORT int8 was; every
backend names the graph rewrites it runs. Also the stratified calibration sampler on the fixtures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.bench.backends import REGISTRY, TorchEager
from harness.bench.backends_ort import OrtFP32, OrtInt8
from harness.run_folder import onnx_path
from harness.bench.device import Device
from harness.config import get_experiment
from harness.run_folder import load_run
from tests.helpers import exported_tiny_runs, skip_unless_ci

CPU = Device("cpu", None)


@pytest.fixture
def torch_int8_runs_here():
    """torch-int8 needs torchao (a dependency) and a C compiler for inductor: without them a developer's
    machine skips its test with the reason; CI (CI=true) fails instead."""
    ok, why = REGISTRY["torch-int8"].available(CPU)
    if not ok:
        skip_unless_ci(why)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    return exported_tiny_runs(tmp_path_factory.mktemp("int8-runs"), data_root)


def _job(run, data_root):
    cfg, _ = load_run(run)
    return {"run_dir": str(run), "task": cfg.task, "data_root": str(data_root),
            "onnx": {p: {"path": str(onnx_path(run, cfg.task, p))} for p in ("fp32", "int8")}}


def test_stratified_calibration_covers_every_class(data_root):
    """A class of 1 in 51 items still gets one of 5 draws (a plain proportional share gives it 0);
    3 pet images from 3 breeds and 10 digits from 10: one of each; seeded: the same set twice."""
    from harness.data import build_splits, class_labels, stratified_indices
    from harness.export_data import ExportData, calibration_inputs

    rare = np.array([0] * 50 + [1])
    assert np.bincount(rare[stratified_indices(rare, 5, seed=0)]).tolist() == [4, 1]
    assert len(stratified_indices(rare, 1, seed=0)) == 1  # fewer draws than classes: still n
    pets = get_experiment("unet-mp-tr-bce").replace(image_size=32)
    train = build_splits(pets.replace(augment=False), data_root)["train"]
    labels = class_labels(train)
    x, drawn = calibration_inputs(pets, ExportData(pets, data_root), 3)
    assert drawn["class_counts"] == [1, 1, 1] and drawn["classes"] == "3 of 3" and x["image"].shape[0] == 3
    images = torch.stack([train[i][0] for i in range(len(train))])
    picked = [int(torch.nonzero((images == im).flatten(1).all(1))[0]) for im in x["image"]]
    assert sorted(set(labels[picked].tolist())) == [0, 1, 2]
    mnist = get_experiment("cvae-mnist")
    y, drawn = calibration_inputs(mnist, ExportData(mnist, data_root), 10)
    assert sorted(y["label"].tolist()) == list(range(10)) and drawn["class_counts"] == [1] * 10
    again, _ = calibration_inputs(mnist, ExportData(mnist, data_root), 10)
    assert torch.equal(again["image"], y["image"]) and torch.equal(again["eps"], y["eps"])


def test_export_records_the_stratified_calibration(runs):
    doc = json.loads((runs["unet"] / "onnx" / "export.json").read_text())
    cal = doc["int8"]["calibration"]
    assert cal["sampler"].startswith("harness.data.stratified_indices") and cal["classes"] == "3 of 3"
    assert cal["count"] == doc["int8"]["calibration_count"] and sum(cal["class_counts"]) == cal["count"]


def _test_inputs(run, data_root, n: int = 6) -> dict:
    from harness.bench.accuracy import prepare_inputs

    cfg, _ = load_run(run)
    folder = run.parent / f"{run.name}-inputs"
    prepare_inputs(cfg, data_root, n, 0, folder)
    return {k: np.load(folder / f"{k}.npy")[:n] for k in (("image",) if cfg.task == "segmentation"
                                                             else ("image", "label", "new_label", "eps"))}


@pytest.mark.parametrize("kind", ["unet", "cvae"])
def test_torch_int8_as_close_to_fp32_as_ort_int8(torch_int8_runs_here, runs, data_root, kind):
    """On real test images, torch int8's error against fp32 is of ORT int8's order (same graph, same
    calibration images), not zero (it is quantized) and not broken; compiled with freezing."""
    from harness.bench.backends_torch_int8 import TorchInt8

    run = runs[kind]
    job = _job(run, data_root)
    x = _test_inputs(run, data_root)
    backends = {"eager": TorchEager(), "torch-int8": TorchInt8(), "ort-fp32": OrtFP32(), "ort-int8": OrtInt8()}
    for b in backends.values():
        b.load(job, 1, CPU)
    c = backends["torch-int8"].prepare(len(x["image"]))
    assert c["cold"] > 0 and c["warm"] > 0
    out = {k: b(x) for k, b in backends.items()}
    torch_err = float(np.abs(out["torch-int8"] - out["eager"]).mean())
    ort_err = float(np.abs(out["ort-int8"] - out["ort-fp32"]).mean())
    scale = float(np.abs(out["eager"]).mean())
    assert 0 < torch_err <= max(3 * ort_err, 0.02 * scale), (torch_err, ort_err, scale)
    if kind == "unet":  # the decision (mask = logits > 0) agrees with fp32's about as often as ORT int8's does
        agree = {k: float(((out[k] > 0) == (out[ref] > 0)).mean()) for k, ref in (("torch-int8", "eager"),
                                                                                  ("ort-int8", "ort-fp32"))}
        assert agree["torch-int8"] >= agree["ort-int8"] - 0.1, agree
    q = backends["torch-int8"]
    ort_cal = json.loads((run / "onnx" / "export.json").read_text())["int8"]["calibration"]
    assert {k: q.calibration[k] for k in ("count", "seed", "class_counts")} == \
        {k: ort_cal[k] for k in ("count", "seed", "class_counts")}
    assert "export.json" in q.calibration["settings_from"]
    isa = json.loads((run / "onnx" / "export.json").read_text())["int8"]["isa"]
    assert q.calibration["reduce_range"] == isa["reduce_range"]  # as ORT int8 was quantized for this CPU
    assert "freezing=True" in q.form["compile"] and "X86InductorQuantizer" in q.form["quantization"]
    assert set(q.graph_rewrites) == ({"fold_batchnorm", "pixel_shuffle_up"} if kind == "unet" else {"subpixel_up4"})
    for b in backends.values():
        b.close()


def test_every_backend_names_its_graph_rewrites(runs, data_root):
    """ORT int8's graphs were rewritten (the UNet's ConvTranspose as 1x1 Conv + DepthToSpace, the CVAE
    decoder's as 3x3 Conv + DepthToSpace), ORT fp32's and torch eager's were not."""
    unet, cvae = _job(runs["unet"], data_root), _job(runs["cvae"], data_root)
    got = {}
    for cls in (TorchEager, OrtFP32, OrtInt8):
        for job in (unet, cvae):
            b = cls() if cls is TorchEager else cls(opt_level="all")
            b.load(job, 1, CPU)
            got[(cls.name, job["task"])] = set(b.graph_rewrites)
            if cls is OrtInt8:
                assert "DepthToSpace" in b.graph_rewrites["pixel_shuffle_up" if job is unet else "subpixel_up4"]
    assert got == {("torch-eager", "segmentation"): {"fold_batchnorm"}, ("torch-eager", "cvae"): set(),
                   ("ort-fp32", "segmentation"): {"fold_batchnorm"}, ("ort-fp32", "cvae"): set(),
                   ("ort-int8", "segmentation"): {"fold_batchnorm", "pixel_shuffle_up"}, ("ort-int8", "cvae"): {"subpixel_up4"}}


def test_serving_peak_rss_leaves_the_test_inputs_out(runs, tmp_path):
    """A worker whose accuracy pass maps ~190 MB of test images: the whole-run peak holds them, the
    serving peak (load + timed rounds, the split unmapped after the accuracy pass) does not."""
    from harness.bench.worker import Worker

    n = 16000
    np.save(tmp_path / "image.npy", np.random.default_rng(0).standard_normal((n, 3, 32, 32), dtype=np.float32))
    job = {"run": "unet", "run_dir": str(runs["unet"]), "task": "segmentation", "dir": str(tmp_path),
           "onnx": {"fp32": {"path": str(onnx_path(runs["unet"], "segmentation", "fp32"))}}}
    w = Worker("ort-fp32", {"device": ["cpu", None], "threads": 1, "batch_sizes": [8], "warmup": 1,
                            "ort_opt_level": "all", "wait": "spin"})
    w.op_load(job)
    assert w.op_accuracy(batch_size=256)["count"] == n
    w.op_measure("offline", 8, {"min_queries": 4, "min_duration": 0.01})
    fin = w.op_finish()
    inputs_mb = n * 3 * 32 * 32 * 4 / 2**20
    assert fin["accuracy_inputs_mb"] == pytest.approx(inputs_mb)
    assert fin["peak_rss_mb"] - fin["peak_rss_serving_mb"] >= 0.8 * inputs_mb, fin


def test_torch_int8_runs_the_up4_form_ort_int8_was_made_from(tmp_path):
    """The CVAE decoder's ConvTranspose2d(4, 2, 1) in the form export.json records for ORT int8
    (`segvae export --int8-up4`); the default form without a record."""
    from harness.bench.backends_torch_int8 import up4_form

    onnx_dir = tmp_path / "onnx"
    assert up4_form(tmp_path) == "conv3x3"  # no export.json
    onnx_dir.mkdir()
    for rewrites, want in (({"subpixel_up4_2x2": "..."}, "conv2x2"), ({"subpixel_up4": "..."}, "conv3x3"), ({}, "conv3x3")):
        (onnx_dir / "export.json").write_text(json.dumps({"int8": {"graph_rewrites": rewrites}}))
        assert up4_form(tmp_path) == want
