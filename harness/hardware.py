"""The machine as data: which CPU (or GPU) this is, and which precisions run natively on it.

One module answers "is bf16 (or int8) native here?" for training, the judges, the bench's
defaults, the peak probe and the report, so they cannot disagree. The answer is PyTorch's and
oneDNN's, not only the CPU's: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` hold PyTorch's
kernels to AVX2 on any x86 machine, and then bf16 is emulated there too. `SEGVAE_CPU_BF16=0|1`
still forces the bf16 answer (one machine can time what `auto` does on the other kind).

Emulated precisions are 60-500x slower (a 2048^3 bf16 matmul took 55.8 s on an AVX2-only EPYC,
fp32 0.1 s), so nothing picks them by default and no "% of peak" is computed against them.
Torch-free at import; torch is imported when a question needs it.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field

# the instruction sets that decide speed here, as /proc/cpuinfo spells them
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# ONEDNN_MAX_CPU_ISA values in increasing order (oneDNN's dnnl_cpu_isa_t); the first that allows each feature
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")
_ONEDNN_NEEDS = {"bf16": "AVX512_CORE_BF16", "vnni": "AVX2_VNNI"}
NATIVE, EMULATED = "native", "emulated"


@dataclass
class Machine:
    """What run.json and bench.json record of the machine, and what the defaults act on."""
    cpu_model: str
    cpu_flags: list[str]                  # the ISA_FLAGS this CPU has
    cores_logical: int | None
    cores_physical: int | None
    torch_cpu_capability: str | None      # torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, ...
    onednn_max_isa: str | None            # ONEDNN_MAX_CPU_ISA when set
    precisions: dict = field(default_factory=dict)  # precision -> {"torch": native|emulated, "why": ...}
    gpu: dict | None = None               # name, capability, driver, CUDA, cuDNN (None: no CUDA device)

    def native(self, precision: str, library: str = "torch") -> bool:
        return precision_status(self, precision, library)[0] == NATIVE

    def as_dict(self) -> dict:
        return asdict(self)


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, every flag) of the first CPU; the platform's name and no flags where unreadable."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(path) as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key == "model name" and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif key == "flags" and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    return model, flags


def torch_cpu_capability() -> str | None:
    try:
        import torch
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # no torch (an ORT-only machine) or an old build without the query
        return None


def _onednn_allows(feature: str, env: dict) -> bool:
    limit = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").upper()
    if not limit or limit in ("ALL", "DEFAULT") or limit not in ONEDNN_ISAS:
        return True
    return ONEDNN_ISAS.index(limit) >= ONEDNN_ISAS.index(_ONEDNN_NEEDS[feature])


def cpu_precisions(flags: set[str] | list[str], capability: str | None, env: dict | None = None) -> dict:
    """precision -> {library: native|emulated, "why": str} on the CPU, decided from the CPU's flags and
    how far PyTorch's kernels may use them (its capability and oneDNN's ISA limit).

    - fp32: native everywhere.
    - bf16 (torch): native with AVX512-BF16 or AMX that PyTorch may use; else converted to fp32 per
      operation (emulated). ONNX Runtime has no bf16 Conv on the CPU.
    - int8: ONNX Runtime's MLAS kernels are native on any AVX2 CPU (u8s8 via vpmaddubsw; without VNNI
      the 16-bit pair sums can saturate, hence reduce_range at export); PyTorch's torch._int_mm (the
      probe's int8 matmul) is native only with VNNI, and emulated without it."""
    env = os.environ if env is None else env
    flags = set(flags)
    cap = (capability or "").upper()
    wide = cap.startswith("AVX512") or "AMX" in cap
    forced = env.get("SEGVAE_CPU_BF16")
    has_bf16 = bool(flags & set(BF16_FLAGS))
    if forced in ("0", "1"):
        bf16 = forced == "1"
        bf16_why = f"SEGVAE_CPU_BF16={forced} forces it"
    elif not has_bf16:
        bf16, bf16_why = False, "the CPU has neither AVX512-BF16 nor AMX: PyTorch converts bf16 to fp32 per op"
    elif capability is not None and not wide:
        bf16, bf16_why = False, (f"PyTorch's kernels are held to {capability} (ATEN_CPU_CAPABILITY), below the "
                                 "CPU's AVX512-BF16/AMX")
    elif not _onednn_allows("bf16", env):
        bf16, bf16_why = False, f"ONEDNN_MAX_CPU_ISA={env.get('ONEDNN_MAX_CPU_ISA')} is below AVX512_CORE_BF16"
    else:
        bf16, bf16_why = True, "AVX512-BF16/AMX, usable by PyTorch and oneDNN"
    vnni = bool(flags & set(VNNI_FLAGS)) and _onednn_allows("vnni", env)
    avx2 = "avx2" in flags
    bf16_status = NATIVE if bf16 else EMULATED
    int8_ok = NATIVE if avx2 else EMULATED
    fp16 = NATIVE if "avx512_fp16" in flags and wide else EMULATED
    # libraries: "torch" (ATen's matmuls, torch._int_mm), "onednn" (the convolutions PyTorch's
    # inductor int8 path lowers to: u8s8 kernels on AVX2), "ort" (ONNX Runtime's MLAS)
    return {
        "fp32": {"torch": NATIVE, "onednn": NATIVE, "ort": NATIVE, "why": "fp32 FMA units"},
        "bf16": {"torch": bf16_status, "onednn": bf16_status, "ort": EMULATED, "why": bf16_why},
        "int8": {"torch": NATIVE if vnni else EMULATED, "onednn": int8_ok, "ort": int8_ok,
                 "why": ("VNNI: int8 dot products in one instruction" if vnni else
                         "no VNNI (or oneDNN held below it): ORT's and oneDNN's u8s8 AVX2 kernels are native "
                         "but their pair sums can saturate (exported with reduce_range); torch._int_mm is emulated")},
        "fp16": {"torch": fp16, "onednn": fp16, "ort": EMULATED,
                 "why": "AVX512-FP16" if fp16 == NATIVE else "no fp16 arithmetic units PyTorch uses on this CPU"},
    }


def gpu_info() -> dict | None:
    """The CUDA device torch sees: name, compute capability, driver, CUDA and cuDNN versions."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        i = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(i)
        cap = torch.cuda.get_device_capability(i)
    except Exception:
        return None
    driver = None
    try:
        import subprocess
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"name": props.name, "capability": f"{cap[0]}.{cap[1]}", "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(), "driver": driver, "cuda": torch.version.cuda, "cudnn": cudnn,
            "bf16_native": cap >= (8, 0)}


def machine(with_gpu: bool = True) -> Machine:
    """This machine, read now (cpuinfo, torch's capability, the env switches, the GPU torch sees)."""
    model, flags = read_cpuinfo()
    try:
        import psutil
        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    cap = torch_cpu_capability()
    return Machine(cpu_model=model, cpu_flags=[f for f in ISA_FLAGS if f in flags], cores_logical=os.cpu_count(),
                   cores_physical=physical, torch_cpu_capability=cap,
                   onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"),
                   precisions=cpu_precisions(flags, cap), gpu=gpu_info() if with_gpu else None)


def precision_status(m: Machine | dict, precision: str, library: str = "torch",
                     device_kind: str = "cpu") -> tuple[str, str]:
    """(native|emulated, why) for `precision` computed by `library` ("torch" or "ort") on this machine."""
    if device_kind == "cuda":
        gpu = (m.gpu if isinstance(m, Machine) else m.get("gpu")) or {}
        if precision == "bf16" and gpu and not gpu.get("bf16_native", True):
            return EMULATED, f"{gpu.get('name')} (compute {gpu.get('capability')}) predates bf16 tensor cores (Ampere)"
        return NATIVE, "GPU"
    table = m.precisions if isinstance(m, Machine) else (m.get("precisions") or {})
    entry = table.get(precision)
    if entry is None:
        return NATIVE, ""
    return entry.get(library, entry.get("torch", NATIVE)), entry.get("why", "")


def backend_status(host: Machine | dict, backend_cls, device_kind: str = "cpu") -> tuple[str, str]:
    """(native|emulated, why) of a bench backend class: its precision on the library it computes with
    (`library`, else its `family`); a GPU backend on the GPU."""
    kind = "cuda" if getattr(backend_cls, "gpu", False) else device_kind
    library = getattr(backend_cls, "library", None) or getattr(backend_cls, "family", "torch")
    return precision_status(host, backend_cls.precision, library, kind)


def cpu_has_native_bf16() -> bool:
    """Training's and the judges' `auto` precision: bf16 where PyTorch runs it natively."""
    model, flags = read_cpuinfo()
    return cpu_precisions(flags, torch_cpu_capability())["bf16"]["torch"] == NATIVE
