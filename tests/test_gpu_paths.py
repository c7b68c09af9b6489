"""The GPU and multi-machine code paths, tested on the CPU: ORT provider selection and its fallback
messages, IO binding on the CPU provider, the shared-output-folder check, collectives' devices, and
scripts/gpu_check.sh's no-CUDA path. (The fp16 graph's parity is in test_export.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import exports.providers as P
from exports.session import OrtSession
from harness.errors import UserError
from harness.multinode import TOKEN_FILE, check_shared_out_dir, shared_folder_verdict, token_problem

REPO = Path(__file__).resolve().parents[1]
ALL_GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    """y = relu(x @ W + b) with a dynamic batch: small enough to build by hand."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [-5.0, 0.0, 5.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------- provider selection
@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:1", "cuda:-1", ""])
def test_parse_device_rejects(bad):
    with pytest.raises(UserError, match="invalid device"):
        P.parse_device(bad)


def test_parse_device():
    assert P.parse_device("cpu") == ("cpu", 0) and P.parse_device("cuda") == ("cuda", 0)
    assert P.parse_device("CUDA:3") == ("cuda", 3)


def test_cpu_only_build_falls_back_and_names_the_missing_wheel(monkeypatch):
    monkeypatch.setattr(P.ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    providers, note = P.providers_for("cuda:1")
    assert providers == ["CPUExecutionProvider"]
    assert "onnxruntime-gpu wheel is not installed" in note and "cuda:1" in note and P.GPU_INSTALL_HINT in note
    assert P.providers_for("cpu") == (["CPUExecutionProvider"], None)
    assert P.providers_for(None) == (["CPUExecutionProvider"], None)  # Azure is not a compute provider


def test_tensorrt_first_when_its_libraries_load(monkeypatch):
    monkeypatch.setattr(P.ort, "get_available_providers", lambda: list(ALL_GPU))
    monkeypatch.setattr(P, "tensorrt_problem", lambda: None)
    providers, note = P.providers_for("cuda:2")
    assert providers == [("TensorrtExecutionProvider", {"device_id": 2}), ("CUDAExecutionProvider", {"device_id": 2}),
                         "CPUExecutionProvider"] and note is None
    providers, note = P.providers_for("cuda:2", tensorrt=False)
    assert providers == [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"] and note is None


def test_without_tensorrt_libraries_cuda_runs_and_an_explicit_ask_says_why(monkeypatch):
    monkeypatch.setattr(P.ort, "get_available_providers", lambda: list(ALL_GPU))
    monkeypatch.setattr(P, "tensorrt_problem", lambda: "TensorRT's libnvinfer is not installed")
    assert P.providers_for("cuda:0") == ([("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], None)
    providers, note = P.providers_for("cuda:0", tensorrt=True)
    assert P.provider_names(providers) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "libnvinfer" in note
    monkeypatch.setattr(P.ort, "get_available_providers", lambda: ALL_GPU[1:])  # a build without TensorRT's EP
    assert "has no TensorrtExecutionProvider" in P.providers_for("cuda:0", tensorrt=True)[1]


def test_tensorrt_problem_loads_the_first_library_that_loads(monkeypatch, tmp_path):
    """None only when a libnvinfer candidate really loads; a file that is not a library, or none at all,
    is named as the problem (a CPU-only machine must never be told TensorRT is there)."""
    import ctypes.util

    loadable = ctypes.util.find_library("c")  # a library that loads, standing in for libnvinfer
    assert loadable, "the C library is not found on this machine"
    wheel_dir = tmp_path / "tensorrt_libs"
    wheel_dir.mkdir()
    system_lib = {"nvinfer": None}
    monkeypatch.setattr(P, "_tensorrt_lib_dirs", lambda: [str(wheel_dir)])
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: system_lib.get(name))
    assert "libnvinfer" in P.tensorrt_problem()  # no candidate at all
    (wheel_dir / "libnvinfer.so.10").write_bytes(b"not an ELF file")
    assert "libnvinfer" in P.tensorrt_problem()  # a candidate that does not load
    system_lib["nvinfer"] = loadable
    assert P.tensorrt_problem() is None  # the broken wheel file is skipped, the loadable one is used


# ---------------------------------------------------------------------------- sessions
def test_session_on_a_cpu_only_build_says_it_fell_back(tiny_onnx, monkeypatch, capsys):
    monkeypatch.setattr(P.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    sess = OrtSession(tiny_onnx, threads=1, device="cuda:0")
    assert sess.device == "cpu" and "onnxruntime-gpu" in sess.fallback
    assert "running on cpu" in capsys.readouterr().out
    with pytest.raises(UserError, match="onnxruntime-gpu wheel is not installed"):
        OrtSession(tiny_onnx, threads=1, device="cuda:0", require_device=True)
    with pytest.raises(UserError, match="either providers or device"):
        OrtSession(tiny_onnx, providers=["CPUExecutionProvider"], device="cpu")


def test_a_provider_that_does_not_load_is_not_silent(tiny_onnx, monkeypatch):
    """ORT drops a provider it cannot load (as when CUDA or cuDNN libraries are missing) with a log line
    only; the session compares what runs with what was asked."""
    monkeypatch.setattr(P, "providers_for",
                        lambda device, tensorrt=None: ([("CUDAExecutionProvider", {"device_id": 0}),
                                                        "CPUExecutionProvider"], None))
    import exports.session as S
    monkeypatch.setattr(S, "providers_for", P.providers_for)
    sess = OrtSession(tiny_onnx, threads=1, device="cuda:0")
    assert sess.device == "cpu" and sess.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider could not be loaded" in sess.fallback
    with pytest.raises(UserError, match="CUDAExecutionProvider could not be loaded"):
        OrtSession(tiny_onnx, threads=1, device="cuda:0", require_device=True)


def test_io_binding_on_the_cpu_provider_matches_plain_run(tiny_onnx):
    sess = OrtSession(tiny_onnx, threads=1, device="cpu")
    assert sess.device == "cpu" and sess.fallback is None
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = np.maximum(x @ np.arange(12, dtype=np.float32).reshape(4, 3) + [-5.0, 0.0, 5.0], 0)
    plain = sess.run({"x": x})["y"]
    bound = sess.bind({"x": x})
    assert bound.device == "cpu"
    bound.run()
    bound.run()  # re-runnable: the inputs stay bound
    (got,) = bound.outputs()
    assert got.shape == (5, 3) and np.array_equal(got, plain)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    with pytest.raises(UserError, match="expected float32, got float64"):
        sess.bind({"x": x.astype(np.float64)})  # the feed is checked once, at binding


# ---------------------------------------------------------------------------- shared output folder
def test_token_problem(tmp_path):
    token = tmp_path / TOKEN_FILE
    assert "not there" in token_problem(token, "abc")
    token.write_text("other\n")
    assert "another run" in token_problem(token, "abc")
    token.write_text("abc\n")
    assert token_problem(token, "abc") is None


def test_verdict_names_the_folder_and_every_rank_that_cannot_see_it(tmp_path):
    assert shared_folder_verdict(tmp_path, [(0, "a", None), (1, "b", None)]) is None
    msg = shared_folder_verdict(tmp_path, [(0, "a", None), (2, "c", "x missing"), (1, "b", "y missing")])
    assert str(tmp_path) in msg and "all 3 processes" in msg and "shared filesystem" in msg
    assert msg.index("rank 1 on b: y missing") < msg.index("rank 2 on c: x missing")


class StubAccelerator:
    """Rank 0 of `n` processes; the other ranks' verdicts come from `others`."""

    def __init__(self, n=2, others=(), device="cpu"):
        self.num_processes, self.process_index, self.is_main_process = n, 0, True
        self.device, self.others, self.barriers, self.calls = torch.device(device), list(others), 0, []

    def wait_for_everyone(self):
        self.barriers += 1

    def reduce(self, t, reduction="sum"):
        self.calls.append(("reduce", t.device))
        assert t.device == self.device, f"reduce got a tensor on {t.device}, accelerator is on {self.device}"
        return torch.zeros(t.shape, dtype=t.dtype).fill_(7 if t.dtype == torch.int64 else 3.5) * self.num_processes

    def gather(self, t):
        self.calls.append(("gather", t.device))
        assert t.device == self.device, f"gather got a tensor on {t.device}, accelerator is on {self.device}"
        return torch.cat([torch.tensor([[-1.0, 0.0]], dtype=torch.float64), torch.tensor([[4.0, float("nan")]],
                                                                                          dtype=torch.float64)])


def _patch_collectives(monkeypatch, acc):
    import accelerate.utils as AU

    monkeypatch.setattr(AU, "broadcast_object_list", lambda objs, from_process=0: objs)
    monkeypatch.setattr(AU, "gather_object", lambda objs: list(objs) + acc.others)


def test_shared_check_passes_and_cleans_up(tmp_path, monkeypatch):
    acc = StubAccelerator(others=[(1, "node-b", None)])
    _patch_collectives(monkeypatch, acc)
    check_shared_out_dir(acc, tmp_path / "out")
    assert acc.barriers == 1 and (tmp_path / "out").is_dir() and not (tmp_path / "out" / TOKEN_FILE).exists()


def test_shared_check_raises_on_every_rank_after_the_gather(tmp_path, monkeypatch):
    acc = StubAccelerator(n=3, others=[(1, "node-b", "rank 0's check file is not there"), (2, "node-a", None)])
    _patch_collectives(monkeypatch, acc)
    with pytest.raises(UserError, match=r"output folder .*out is not shared by all 3 processes \(rank 1 on node-b"):
        check_shared_out_dir(acc, tmp_path / "out")
    assert not (tmp_path / "out" / TOKEN_FILE).exists()


def test_shared_check_is_skipped_for_one_process(tmp_path):
    acc = StubAccelerator(n=1)
    check_shared_out_dir(acc, tmp_path / "out")
    assert acc.barriers == 0 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- collectives on the device
def test_epoch_totals_reduce_tensors_on_the_accelerator_device():
    """On a GPU run accelerator.device is cuda and NCCL rejects CPU tensors; 'meta' stands in for it here,
    so a tensor made on the CPU by mistake fails the stub's assert."""
    from harness.train import epoch_totals

    acc = StubAccelerator(device="meta")
    total = torch.zeros((), dtype=torch.float64, device="meta")
    seen, mean = epoch_totals(acc, total, count=5)
    assert [c for c in acc.calls] == [("reduce", torch.device("meta"))] * 2
    assert seen == 14 and mean == pytest.approx(7.0 / 14)


def test_finite_watch_stays_on_the_device_and_names_the_first_bad_step(tmp_path):
    from harness.train import FiniteWatch

    watch = FiniteWatch(torch.device("meta"))
    watch.add(torch.tensor(float("nan"), device="meta"), step=4)  # no host read per step
    assert watch.first_bad.device.type == "meta" and watch.bad_value.device.type == "meta"
    acc = StubAccelerator(device="meta")  # its gather reports rank 1's first bad step: index 4 (step 5)
    with pytest.raises(UserError, match=r"loss became nan at step 5 \(epoch 2\)"):
        watch.check(acc, epoch=1, ckpt_dir=tmp_path)
    assert acc.calls == [("gather", torch.device("meta"))]
    cpu = FiniteWatch(torch.device("cpu"))
    for step, v in enumerate([1.0, 2.0, float("inf"), float("nan")]):
        cpu.add(torch.tensor(v), step)
    with pytest.raises(UserError, match=r"loss became inf at step 3 \(epoch 1\)"):
        cpu.check(StubAccelerator(n=1), epoch=0, ckpt_dir=tmp_path / "none")


def test_two_gloo_ranks_with_unshared_folders_both_fail_without_hanging(tmp_path):
    """Real collectives (2 processes, gloo): rank 1 looks at another folder, as on a machine without the
    shared mount; both ranks raise the same error (a hang would hit the timeout)."""
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom accelerate import Accelerator\n"
        "from harness.errors import UserError\nfrom harness.multinode import check_shared_out_dir\n"
        "acc = Accelerator(cpu=True)\nassert acc.num_processes == 2\n"
        "try:\n    check_shared_out_dir(acc, Path(sys.argv[1]) / f'node{acc.process_index}')\n"
        "except UserError as e:\n    print(f'rank {acc.process_index} error: {e}', flush=True)\n    sys.exit(3)\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank} error: output folder {tmp_path / f'node{rank}'} is not shared by all 2 processes " \
               f"(rank 1 on" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_exports_import_nothing_from_harness():
    """exports/ is the graph tooling a deployment can ship alone: no import of harness, at any level."""
    import ast

    found = []
    for path in sorted((REPO / "exports").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n == "harness" or n.startswith("harness.")]
    assert found == []
