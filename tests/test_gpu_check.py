"""scripts/gpu_check.sh on a machine without CUDA (the path every CPU machine takes), and the summary's
verdicts on bench results built to fail: a backend that never ran, a record on the CPU."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _run(tmp_path, *args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    env.pop("GPU_CHECK_REQUIRE_CUDA", None)
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out"), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_without_cuda_it_says_so_writes_the_summary_and_passes(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "no CUDA:" in r.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "no CUDA" and "sees no GPU" in summary["why"] and "r580" in summary["why"]
    assert summary["stages"] == []  # nothing installed, nothing trained
    assert summary["preflight"]["machine"]["cpu_model"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.log", "summary.json"]


def test_require_cuda_without_cuda_fails(tmp_path):
    r = _run(tmp_path, "--require-cuda")
    assert r.returncode == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "no CUDA"


def test_ort_gpu_backends_are_not_checked_without_onnxruntime_gpu():
    asked, not_checked = gpu_check.requested_backends(["CPUExecutionProvider"])
    assert asked == ["torch-eager", "torch-bf16", "torch-fp16"]
    assert set(not_checked.values()) == {"not checked: onnxruntime-gpu not installed"}
    asked, not_checked = gpu_check.requested_backends(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "ort-cuda" in asked and "ort-cuda-fp16" in asked and "TensorRT" in not_checked["ort-tensorrt"]


def _runs(tmp_path, device="cuda"):
    (tmp_path / "runs" / "unet-bf16").mkdir(parents=True)
    (tmp_path / "runs" / "unet-bf16" / "metrics.json").write_text(json.dumps({"device": device, "mixed_precision": "bf16"}))
    return tmp_path / "runs"


def _rec(backend, device="cuda:0"):
    return {"backend": backend, "scenario": "offline", "batch_size": 32, "rank": None, "device": device,
            "samples_per_s": 100.0, "latency_ms": {"p50": 1.0}}


def test_a_backend_that_failed_to_load_fails_the_summary(tmp_path):
    asked = ["torch-eager", "torch-bf16", "torch-fp16"]
    bench = {"results": [_rec("torch-eager"), _rec("torch-bf16")],
             "skipped": {"torch-fp16": "load failed: RuntimeError: planted"}}
    facts, problems = gpu_check.summarize(_runs(tmp_path), bench, asked, {})
    assert problems == ["backend torch-fp16 did not run: load failed: RuntimeError: planted"]
    assert facts["backends"] == {"torch-eager": "ok", "torch-bf16": "ok", "torch-fp16": "FAILED: load failed: RuntimeError: planted"}
    bench["results"].append(_rec("torch-fp16"))
    assert gpu_check.summarize(_runs(tmp_path / "b"), bench, asked, {})[1] == []


def test_a_stage_on_the_cpu_fails_the_summary(tmp_path):
    facts, problems = gpu_check.summarize(_runs(tmp_path, device="cpu"), {"results": [_rec("torch-eager", "cpu")]},
                                          ["torch-eager"], {"ort-cuda": gpu_check.NOT_INSTALLED})
    assert len(problems) == 2 and "trained on 'cpu'" in problems[0] and "ran on 'cpu'" in problems[1]
    assert facts["backends"]["ort-cuda"] == gpu_check.NOT_INSTALLED
    assert gpu_check.summarize(_runs(tmp_path / "b"), None, ["torch-eager"], {})[1] == [
        "no bench.json: the bench did not finish"]
