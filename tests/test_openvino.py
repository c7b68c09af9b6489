"""The optional OpenVINO backends: 'not installed' said cleanly without the extra; with it, the same
ONNX graphs give ORT's outputs (fp32 within fp32 rounding, int8 within the CVAE gate's bound) and the
bench runs and gates them like the others."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from harness.bench import BenchConfig, run_bench
from harness.bench.backends import REGISTRY, example_inputs
from harness.bench.device import Device
from harness.export_stage import export_run
from harness.run_folder import load_run
from tests import helpers
from tests.helpers import tiny_config


def make_run(root, name: str):
    """A tiny random-init run of `name` under root (non-trivial BatchNorm statistics)."""
    return helpers.make_run(root / name, tiny_config(name), random_batchnorm=True)

CPU = Device("cpu", None)


def test_openvino_not_installed_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    for name in ("openvino-fp32", "openvino-bf16", "openvino-int8"):
        ok, why = REGISTRY[name].available(CPU)
        assert not ok and "openvino not installed" in why and "[openvino]" in why


@pytest.fixture(scope="module")
def cvae(tmp_path_factory, data_root):
    try:
        import openvino  # noqa: F401
    except ImportError:  # CI installs the extra (.ci/run): there its absence fails
        helpers.skip_unless_ci("the optional extra `openvino` is not installed")
    run = make_run(tmp_path_factory.mktemp("ov"), "cvae-mnist")
    export_run(run, quantize="int8", data_root=data_root, calib_count=16, threads=1)
    return run


def test_openvino_runs_the_same_graphs_as_ort(cvae):
    cfg, _ = load_run(cvae)
    x = example_inputs(cfg, 5)
    job = {"run_dir": str(cvae), "task": "cvae",
           "onnx": {p: {"path": str(cvae / "onnx" / f)} for p, f in (("fp32", "swap.onnx"), ("int8", "swap.int8.onnx"))}}
    out = {}
    for name in ("ort-fp32", "ort-int8", "openvino-fp32", "openvino-int8"):
        b = REGISTRY[name]()
        b.load(job, 1, CPU)
        out[name] = b(x)
        b.close()
    assert out["openvino-fp32"].shape == (5, 1, 28, 28)
    assert np.abs(out["openvino-fp32"] - out["ort-fp32"]).max() < 1e-4
    assert np.abs(out["openvino-int8"] - out["ort-fp32"]).mean() < 0.02    # the CVAE int8 gate's bound
    assert np.abs(out["openvino-int8"] - out["openvino-fp32"]).max() > 0    # it did run the int8 graph


def test_bench_times_and_gates_openvino(cvae, data_root, tmp_path):
    cfg = BenchConfig(backends=["torch-eager", "openvino-fp32", "openvino-int8"], scenarios=["offline"],
                      batch_sizes=[2], rounds=2, min_queries=2, min_duration=0.01, warmup=1, peak_size=128,
                      peak_reps=1, threads=1)
    doc = run_bench([cvae], cfg, data_root=data_root, out=tmp_path / "bench.json")
    recs = {r["backend"]: r for r in doc["results"]}
    for name in ("openvino-fp32", "openvino-int8"):
        r = recs[name]
        assert r["accuracy_gate"]["pass"] is True and r["samples_per_s"] > 0
        assert r["form"]["config"]["INFERENCE_PRECISION_HINT"] == "f32" and r["form"]["inference_precision"] == "f32"
        assert r["device"] == "cpu"
        assert r["torch_in_process"] is False


def test_openvino_bf16_runs_the_fp32_graph_in_bf16_only_where_the_cpu_has_it(cvae):
    """openvino-bf16 reads the fp32 graph; where OpenVINO's CPU plugin lists BF16 it compiles it in bf16
    (outputs within bf16 rounding of fp32, not equal to them); elsewhere it is unavailable, not run as f32."""
    import openvino as ov

    cls = REGISTRY["openvino-bf16"]
    assert cls.precision == "bf16" and cls.onnx_key() == "fp32"
    ok, why = cls.available(CPU)
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert not ok and "no bf16" in why
        return
    assert ok, why
    cfg, _ = load_run(cvae)
    x = example_inputs(cfg, 5)
    job = {"run_dir": str(cvae), "task": "cvae", "onnx": {"fp32": {"path": str(cvae / "onnx" / "swap.onnx")}}}
    out = {}
    for name in ("openvino-fp32", "openvino-bf16"):
        b = REGISTRY[name]()
        b.load(job, 1, CPU)
        out[name], form = b(x), b.form
        b.close()
    assert form["inference_precision"] == "bf16" and form["graph"] == "swap.onnx"
    err = np.abs(out["openvino-bf16"] - out["openvino-fp32"])
    assert 0 < err.max() < 0.05 and err.mean() < 0.01  # bf16 keeps 8 bits of mantissa: ~0.4% per op
