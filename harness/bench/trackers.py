"""What the bench records besides time: memory (peak RSS), FLOPs, provenance (machine, software,
git state, the exact ONNX files and the export they came from). Torch-free at import."""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from harness.bench.backend_base import INPUT_NAMES
from harness.bench.backends_ort import files_size  # noqa: F401 - re-exported

ENV_FIELDS = ("cpu_model", "cpu_flags", "bf16_native", "int8_vnni", "torch_cpu_capability", "onednn_max_isa",
              "precisions", "gpu", "cores_logical", "cores_physical", "platform",
              "python", "torch", "onnxruntime", "accelerate", "numpy", "git_commit", "git_dirty", "command", "time")


# --------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: /proc/self/clear_refs), so the next peak is this run's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> tuple[float, str]:
    """(peak resident MB of this process, method). VmHWM on Linux, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (kb / 1024.0 if sys.platform != "darwin" else kb / 2**20), "ru_maxrss"


# --------------------------------------------------------------------------- FLOPs
def flops_per_sample(module, task: str, inputs: Mapping[str, np.ndarray]) -> int:
    """torch.utils.flop_counter total at batch 1 (FLOPs = 2 x MACs; convs and matmuls only) of the
    module the torch backends run."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    args = [torch.from_numpy(np.ascontiguousarray(inputs[k][:1])) for k in INPUT_NAMES[task]]
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        module.eval()(*args)
    return int(fc.get_total_flops())


# --------------------------------------------------------------------------- provenance
def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return None


def command_line(argv: list[str]) -> str:
    argv = [str(a) for a in argv]
    if argv and argv[0].endswith(os.path.join("harness", "__main__.py")):
        argv = ["python", "-m", "harness", *argv[1:]]
    return shlex.join(argv)


def env_info(argv: list[str] | None = None, host=None) -> dict:
    """The machine (harness.hardware: CPU, instruction sets, which precisions are native, the GPU),
    the software and the git state. host: the Machine already read (read now when None)."""
    from harness.hardware import machine
    from harness.run_folder import git_state

    m = host or machine()
    git = git_state()
    return {
        "cpu_model": m.cpu_model, "cpu_flags": m.cpu_flags,
        "bf16_native": m.native("bf16"), "int8_vnni": m.native("int8"),
        "torch_cpu_capability": m.torch_cpu_capability, "onednn_max_isa": m.onednn_max_isa,
        "precisions": m.precisions, "gpu": m.gpu,
        "cores_logical": m.cores_logical, "cores_physical": m.cores_physical,
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": _version("torch"), "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "accelerate": _version("accelerate"), "numpy": np.__version__,
        "git_commit": git["commit"], "git_dirty": git["dirty"],
        "command": command_line(argv if argv else sys.argv),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def onnx_provenance(run_dir: Path, run_hash: str, need: bool) -> dict:
    """RUN/onnx/export.json checked against the run: {"config_hash", "export_json"}.

    need=True (an ONNX backend is to be timed): a missing folder or export.json, or an export
    whose config_hash differs from the run's, is a UserError naming the folder and the command to
    re-run. The bench never exports by itself."""
    from harness.errors import UserError
    from harness.io import read_json

    from harness.run_folder import EXPORT_FILE, ONNX_DIR

    folder = Path(run_dir) / ONNX_DIR
    meta = folder / EXPORT_FILE
    again = f"segvae export {run_dir} --quantize int8 [--data-root DATA]"
    if not meta.is_file():
        if need:
            what = "no onnx/ folder" if not folder.is_dir() else f"no {meta.name} in {folder}"
            raise UserError(f"{run_dir}: {what}; the bench times exported graphs and never exports "
                            f"itself: run `{again}` first (or bench torch backends only with --backends)")
        return {"config_hash": None, "export_json": None}
    doc = read_json(meta, "export metadata")
    got = doc.get("config_hash") if isinstance(doc, dict) else None
    if need and got != run_hash:
        raise UserError(f"{folder} is stale: exported from config hash {got}, but the run's config.json "
                        f"hashes to {run_hash}; re-export with `{again}`")
    return {"config_hash": got, "export_json": str(meta)}
