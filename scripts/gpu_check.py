"""The prepared GPU check: trains a UNet and a CVAE briefly on CUDA (fp32, bf16, fp16), exports them
(fp32 + fp16 graphs), checks ONNX Runtime on CUDA where onnxruntime-gpu is installed, benches torch
on CUDA against it, and writes OUTDIR/summary.json and OUTDIR/gpu_check.log, whatever happens.

Made for a GPU machine with no network: it runs with whatever interpreter has torch (PYTHON=python3,
the project imported from this checkout), installs nothing unless --install is given, gives every
stage a timeout inside a whole-check deadline (6 minutes by default), and keeps its runs and graphs
in a temporary folder, so OUTDIR holds two small files. Exit status: 0 passed (or no CUDA, unless
--require-cuda), 1 a stage failed or ran on the CPU or a requested backend did not run, 2 no CUDA
with --require-cuda.

    python scripts/gpu_check.py OUTDIR [--require-cuda] [--install] [--data-root D] [--deadline-s 360]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NEEDED = ("torch", "torchvision", "PIL", "numpy", "onnx", "onnxscript", "onnxruntime", "accelerate", "safetensors",
          "psutil", "yaml", "tqdm")
TORCH_BACKENDS = ("torch-eager", "torch-bf16", "torch-fp16")
ORT_GPU_BACKENDS = {"ort-cuda": "CUDAExecutionProvider", "ort-cuda-fp16": "CUDAExecutionProvider",
                    "ort-tensorrt": "TensorrtExecutionProvider"}
NOT_INSTALLED = "not checked: onnxruntime-gpu not installed"
DRIVER_NOTE = ("PyTorch's CUDA 13 builds need an NVIDIA driver of the r580 series or newer (CUDA 12 builds: r525+); "
               "`nvidia-smi` shows the driver")


class Check:
    """Runs the stages as child processes, each with its timeout, logging everything to one file."""

    def __init__(self, out: Path, deadline_s: float):
        self.out, self.t_end = out, time.monotonic() + deadline_s
        self.log = open(out / "gpu_check.log", "w", buffering=1)
        self.stages: list[dict] = []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}

    def say(self, msg: str) -> None:
        line = f"== gpu_check {time.strftime('%H:%M:%S')}: {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def stage(self, name: str, argv: list[str], timeout_s: float, stdin: str | None = None) -> bool:
        left = self.t_end - time.monotonic()
        if left < 5:
            self.stages.append({"stage": name, "ok": False, "seconds": 0.0, "rc": None, "timed_out": True,
                                "note": "not started: the check's deadline was reached"})
            self.say(f"{name}: not started (deadline reached)")
            return False
        limit = min(timeout_s, left)
        self.say(f"{name} (timeout {limit:.0f} s)")
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            text, _ = proc.communicate(stdin, timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and every worker it started
            text, _ = proc.communicate()
            timed_out = True
        self.log.write(text or "")
        seconds = time.monotonic() - t0
        ok = proc.returncode == 0 and not timed_out
        tail = (text or "").strip().splitlines()[-3:]
        self.stages.append({"stage": name, "ok": ok, "seconds": round(seconds, 1), "rc": proc.returncode,
                            "timed_out": timed_out, "tail": tail})
        self.say(f"{name}: {'ok' if ok else 'TIMED OUT' if timed_out else f'FAILED (exit {proc.returncode})'} "
                 f"in {seconds:.1f} s")
        return ok


def preflight() -> dict:
    """What this interpreter has: missing modules, torch's CUDA view, ONNX Runtime's providers."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    info: dict = {"python": sys.executable, "missing_modules": missing}
    try:
        import torch
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if not info["cuda_available"]:
            info["why_no_cuda"] = (f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU "
                                   f"(torch.cuda.is_available() is False); {DRIVER_NOTE}")
    except Exception as e:  # no torch at all
        info.update(torch=None, cuda_available=False, why_no_cuda=f"torch does not import: {type(e).__name__}: {e}")
    try:
        import onnxruntime as ort
        info.update(onnxruntime=ort.__version__, ort_providers=ort.get_available_providers())
    except Exception as e:
        info.update(onnxruntime=None, ort_providers=[], ort_error=f"{type(e).__name__}: {e}")
    try:
        sys.path.insert(0, str(REPO))
        from harness.hardware import machine
        info["machine"] = machine().as_dict()
    except Exception as e:
        info["machine"] = {"error": f"{type(e).__name__}: {e}"}
    return info


def requested_backends(providers: list[str]) -> tuple[list[str], dict]:
    """(the backends the bench is asked for, {backend: why not checked}): ONNX Runtime's GPU
    providers only where onnxruntime-gpu provides them."""
    asked, not_checked = list(TORCH_BACKENDS), {}
    for name, provider in ORT_GPU_BACKENDS.items():
        if provider in providers:
            asked.append(name)
        elif "CUDAExecutionProvider" not in providers:
            not_checked[name] = NOT_INSTALLED
        else:
            not_checked[name] = f"not checked: {provider} not in this onnxruntime-gpu (TensorRT not installed)"
    return asked, not_checked


def summarize(runs_dir: Path, bench: dict | None, asked: list[str], not_checked: dict) -> tuple[dict, list[str]]:
    """(per-stage facts, problems) from the runs' metrics.json and bench.json: every training and
    every bench record must say cuda, and every requested backend must have records (one that failed
    to load, or was skipped, is a problem, not a pass)."""
    problems, train = [], {}
    for m in sorted(Path(runs_dir).glob("*/metrics.json")):
        d = json.loads(m.read_text())
        train[m.parent.name] = {k: d.get(k) for k in ("device", "device_name", "mixed_precision", "train_samples_per_s")}
        if d.get("device") != "cuda":
            problems.append(f"{m.parent.name}: trained on {d.get('device')!r}, not cuda")
    backends = {name: why for name, why in not_checked.items()}
    rows = []
    if bench is None:
        problems.append("no bench.json: the bench did not finish")
        return {"train": train, "bench": rows, "backends": backends}, problems
    records = bench.get("results") or []
    for name in asked:
        mine = [r for r in records if r.get("backend") == name and r.get("rank") in (None, 0)]
        skipped = (bench.get("skipped") or {}).get(name)
        if not mine:
            backends[name] = f"FAILED: {skipped or 'no records'}"
            problems.append(f"backend {name} did not run: {skipped or 'no records in bench.json'}")
            continue
        backends[name] = "ok"
        for r in mine:
            rows.append({k: r.get(k) for k in ("backend", "scenario", "batch_size", "device", "samples_per_s")}
                        | {"p50_ms": (r.get("latency_ms") or {}).get("p50")})
            if not str(r.get("device") or "").startswith("cuda"):
                backends[name] = f"FAILED: ran on {r.get('device')!r}"
                problems.append(f"bench {name} {r.get('scenario')} bs {r.get('batch_size')}: ran on {r.get('device')!r}, not cuda")
    return {"train": train, "bench": rows, "backends": backends}, problems


def _install(check: Check, py: str) -> None:
    """The `gpu` extra: onnxruntime-gpu in place of onnxruntime (both provide the onnxruntime module)."""
    check.stage("install onnxruntime-gpu", [py, "-m", "pip", "install", "-q", "-e", ".[gpu]"], 240)
    check.stage("remove the CPU onnxruntime", [py, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], 60)
    check.stage("reinstall onnxruntime-gpu", [py, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps",
                                              "onnxruntime-gpu[cuda,cudnn]>=1.28"], 240)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=os.environ.get("OUT", "gpu_check_out"), help="folder for summary.json and the log")
    ap.add_argument("--require-cuda", action="store_true", default=os.environ.get("GPU_CHECK_REQUIRE_CUDA") == "1",
                    help="no CUDA is a failure (exit 2), not a skip (env GPU_CHECK_REQUIRE_CUDA=1)")
    ap.add_argument("--install", action="store_true", default=os.environ.get("GPU_CHECK_INSTALL") == "1",
                    help="install the gpu extra first (needs a package index; env GPU_CHECK_INSTALL=1)")
    ap.add_argument("--data-root", default=os.environ.get("DATA_ROOT"), help="data (default: the embedded sample)")
    ap.add_argument("--deadline-s", type=float, default=float(os.environ.get("GPU_CHECK_DEADLINE_S", 360)))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, a.deadline_s)
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="segvae-gpu-check-"))
    t0 = time.monotonic()
    summary: dict = {"status": None, "require_cuda": a.require_cuda, "deadline_s": a.deadline_s}
    try:
        if a.install:
            _install(check, py)
        info = preflight()
        summary["preflight"] = info
        if not info.get("cuda_available"):
            summary["status"] = "no CUDA"
            summary["why"] = info.get("why_no_cuda")
            check.say(f"no CUDA: {summary['why']}" + ("; --require-cuda: FAILED" if a.require_cuda else "; nothing to check"))
            return 2 if a.require_cuda else 0
        problems = [f"missing module {m}" for m in info["missing_modules"]]
        data = ["--data-root", a.data_root] if a.data_root else []
        runs = work / "runs"
        unet = ["unet-mp-tr-bce", "--base-channels", "32", "--image-size", "128", "--batch-size", "32", "--epochs", "2"]
        cvae = ["cvae-mnist", "--base-channels", "32", "--batch-size", "256", "--epochs", "2"]
        extra = ["--max-train-samples", "2048"] if a.data_root else []
        for prec in ("no", "bf16", "fp16"):
            check.stage(f"train the UNet, mixed precision {prec}", [py, "-m", "harness", "train", *unet, *data, *extra,
                        "--mixed-precision", prec, "--out", str(runs / f"unet-{prec}")], 90)
        for prec in ("bf16", "fp16"):
            check.stage(f"train the CVAE, mixed precision {prec}", [py, "-m", "harness", "train", *cvae, *data, *extra,
                        "--mixed-precision", prec, "--out", str(runs / f"cvae-{prec}")], 90)
        for run in ("unet-bf16", "cvae-bf16"):
            check.stage(f"export {run} (fp32 + fp16 graphs)", [py, "-m", "harness", "export", str(runs / run), "--fp16"], 120)
        asked, not_checked = requested_backends(info.get("ort_providers") or [])
        if "ort-cuda" in asked:
            check.stage("ONNX Runtime session on CUDA (no CPU fallback)", [py, "-c", _ORT_CUDA, str(runs / "unet-bf16" / "onnx" / "model.onnx")], 60)
        for name, why in not_checked.items():
            check.say(f"{name}: {why}")
        bench_json = work / "bench.json"
        check.stage("bench torch on CUDA" + (" vs ONNX Runtime's GPU providers" if len(asked) > 3 else ""),
                    [py, "-m", "harness", "bench", str(runs / "unet-bf16"), "--device", "cuda", "--backends", ",".join(asked),
                     "--batch-sizes", "1,32", "--rounds", "3", "--min-duration", "0.2", "--peak-budget-s", "5",
                     "--out", str(bench_json)], 150)
        bench = json.loads(bench_json.read_text()) if bench_json.is_file() else None
        facts, found = summarize(runs, bench, asked, not_checked)
        summary.update(facts)
        problems += [f"stage failed: {s['stage']}" + (" (timed out)" if s["timed_out"] else "")
                     for s in check.stages if not s["ok"]] + found
        summary["problems"] = problems
        summary["status"] = "failed" if problems else "passed"
        check.say("FAILED: " + "; ".join(problems) if problems else "every stage ran on CUDA")
        return 1 if problems else 0
    finally:
        summary["stages"] = check.stages
        summary["seconds"] = round(time.monotonic() - t0, 1)
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        tmp.replace(out / "summary.json")
        check.say(f"summary: {(out / 'summary.json').resolve()}; log: {(out / 'gpu_check.log').resolve()}")
        check.log.close()
        shutil.rmtree(work, ignore_errors=True)


_ORT_CUDA = """
import sys
import numpy as np
from exports.session import OrtSession
s = OrtSession(sys.argv[1], device="cuda:0", tensorrt=False, require_device=True)
x = np.zeros((2, 3, 128, 128), np.float32)
b = s.bind({"image": x}); b.run()
assert np.allclose(b.outputs()[0], s.run({"image": x})["logits"], atol=1e-3), "IO binding differs from run()"
print(f"ORT {s.device}: providers {s.providers}")
"""

if __name__ == "__main__":
    sys.exit(main())
