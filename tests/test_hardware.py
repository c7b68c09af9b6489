"""harness.hardware: which precisions are native, decided as PyTorch decides (its CPU capability and
oneDNN's ISA limit, which ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 lower on any x86 machine),
and what acts on it: the bench's default backends, `segvae run`'s preset, the probe, int8 export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.bench.peak import probe_peak, reusable_peak
from harness.bench.runner import default_backends
from harness.export_stage import int8_isa
from harness.hardware import EMULATED, NATIVE, Machine, cpu_precisions, machine
from harness.pipeline import bench_for_machine

REPO = Path(__file__).resolve().parent.parent
AMX_XEON = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
VNNI_XEON = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}
EPYC_AVX2 = {"avx2", "fma"}
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _host(flags, capability, env=None) -> Machine:
    return Machine("test CPU", sorted(flags), 2, 2, capability, (env or {}).get("ONEDNN_MAX_CPU_ISA"),
                   cpu_precisions(flags, capability, env or {}))


@pytest.mark.parametrize("flags, capability, env, bf16, torch_int8, ort_int8", [
    (AMX_XEON, "AVX512", {}, NATIVE, NATIVE, NATIVE),
    (AMX_XEON, "AVX2", {}, EMULATED, NATIVE, NATIVE),                  # ATEN_CPU_CAPABILITY=avx2
    (AMX_XEON, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, EMULATED, EMULATED, NATIVE),
    (AMX_XEON, "AVX2", AVX2_ENV, EMULATED, EMULATED, NATIVE),          # both switches: an AVX2-only CPU for PyTorch
    (VNNI_XEON, "AVX512", {}, EMULATED, NATIVE, NATIVE),               # AVX-512 VNNI, no bf16 units
    (EPYC_AVX2, "AVX2", {}, EMULATED, EMULATED, NATIVE),
    (EPYC_AVX2, "AVX2", {"SEGVAE_CPU_BF16": "1"}, NATIVE, EMULATED, NATIVE),  # forced, to time the other kind
    (AMX_XEON, "AVX512", {"SEGVAE_CPU_BF16": "0"}, EMULATED, NATIVE, NATIVE),
])
def test_native_or_emulated(flags, capability, env, bf16, torch_int8, ort_int8):
    p = cpu_precisions(flags, capability, env)
    assert (p["bf16"]["torch"], p["int8"]["torch"], p["int8"]["ort"]) == (bf16, torch_int8, ort_int8)
    assert p["fp32"]["torch"] == NATIVE and p["bf16"]["ort"] == EMULATED
    assert p["int8"]["onednn"] == NATIVE  # oneDNN's int8 convolutions have AVX2 kernels
    if capability == "AVX2" and "SEGVAE_CPU_BF16" not in env and "avx512_bf16" in flags:
        assert "ATEN_CPU_CAPABILITY" in p["bf16"]["why"]


def test_default_backends_leave_out_what_the_machine_emulates():
    keep, left = default_backends(_host(EPYC_AVX2, "AVX2"))
    assert "torch-bf16" in left and "emulated on this machine" in left["torch-bf16"]
    assert {"torch-eager", "ort-fp32", "ort-int8"} <= set(keep) and "torch-bf16" not in keep
    assert "torch-int8" in keep  # its convs are oneDNN's u8s8 kernels (native on AVX2), not torch._int_mm
    keep, left = default_backends(_host(AMX_XEON, "AVX512"))
    assert "torch-bf16" in keep and "torch-bf16" not in left


def test_the_preset_bench_fits_the_machine():
    quick = {"rounds": 3, "backends": ["torch-eager", "torch-bf16", "ort-fp32", "ort-int8"]}
    settings, left = bench_for_machine(quick, _host(AMX_XEON, "AVX2", AVX2_ENV))
    assert settings["backends"] == ["torch-eager", "ort-fp32", "ort-int8"] and list(left) == ["torch-bf16"]
    assert bench_for_machine(quick, _host(AMX_XEON, "AVX512"))[0]["backends"] == quick["backends"]


def test_int8_export_settings_follow_vnni():
    assert int8_isa(_host(EPYC_AVX2, "AVX2"))["reduce_range"] is True
    assert int8_isa(_host(VNNI_XEON, "AVX512"))["reduce_range"] is False
    assert int8_isa(_host(EPYC_AVX2, "AVX2"), "off")["reduce_range"] is False


def test_probe_skips_emulated_precisions():
    peak = probe_peak(threads=1, max_n=512, reps=2, budget_s=2.0, host=_host(EPYC_AVX2, "AVX2"))
    assert peak["bf16"]["status"] == EMULATED and peak["bf16"]["gflops_per_s"] is None
    assert "emulated" in peak["bf16"]["note"]
    assert peak["fp32"]["status"] == NATIVE and peak["fp32"]["gflops_per_s"] > 0 and peak["fp32"]["n"] <= 512
    # int8: torch._int_mm is emulated without VNNI, so ORT's MatMulInteger (native MLAS kernels) is the peak
    assert peak["int8"]["method"].startswith("onnxruntime MatMulInteger") and peak["int8"]["gflops_per_s"] > 0
    assert "torch._int_mm not timed: emulated" in peak["int8"]["note"]


class FakeClock:
    """A product of size n 'takes' n^3 / rate(n) seconds on this clock: the sizing logic, without timing."""

    def __init__(self, rate):
        self.now, self.rate, self.sizes = 0.0, rate, []

    def __call__(self):
        return self.now

    def make(self, n):
        self.sizes.append(n)

        def call():
            self.now += n ** 3 / self.rate(n)
        return call


@pytest.mark.parametrize("base, budget, want_n", [
    (1e11, 3.75, 2048),   # fast: grows to max_n (2048^3 / 1e11 = 0.086 s per call)
    (1e10, 3.75, 1024),   # 1024^3 / 1e10 = 0.107 s >= 0.1 s stops the growth
    (1e9, 3.75, 512),
    (1e7, 3.75, 256),     # emulated-slow: 256^3 / 1e7 = 1.7 s, already over 0.1 s
])
def test_probe_sizes_itself_within_its_budget(monkeypatch, base, budget, want_n):
    import harness.bench.peak as peak_mod

    clock = FakeClock(lambda n: base)
    monkeypatch.setattr(peak_mod.time, "perf_counter", clock)
    best, n = peak_mod.sized_best(clock.make, max_n=2048, reps=5, budget_s=budget)
    assert max(clock.sizes) == want_n and best == pytest.approx(n ** 3 / base)
    # the warm-up and the size steps, then timed calls only while one more fits: never past the budget
    # by more than the warm-up of the first size
    assert clock.now <= budget + 2 * (peak_mod.START_N ** 3 / base)
    # a machine whose rate peaks at a mid size (its caches): that size's rate is the peak, not the last one's
    clock = FakeClock(lambda n: 2e10 if n == 512 else 1e10)
    monkeypatch.setattr(peak_mod.time, "perf_counter", clock)
    best, n = peak_mod.sized_best(clock.make, max_n=2048, reps=5, budget_s=budget)
    assert n == 512 and best == pytest.approx(512 ** 3 / 2e10)


def test_a_stored_probe_is_reused_only_on_this_machine_at_these_threads(tmp_path):
    from harness.bench.peak import machine_key

    stored = {"threads": 1, "machine": machine_key(machine(with_gpu=False)), "fp32": {"gflops_per_s": 1.0}}
    path = tmp_path / "peak.json"
    path.write_text(json.dumps(stored))
    assert reusable_peak(path, threads=1) == stored
    assert reusable_peak(path, threads=2) is None                      # other threads: probe again
    path.write_text(json.dumps({**stored, "machine": {**stored["machine"], "cpu_model": "another CPU"}}))
    assert reusable_peak(path, threads=1) is None                      # another machine: probe again
    assert reusable_peak(tmp_path / "missing.json", threads=1) is None


def test_held_to_avx2_this_machine_reads_bf16_as_emulated():
    """The env switches as a user sets them: a fresh process reads the machine under them."""
    code = ("import json; from harness.hardware import machine; m = machine(with_gpu=False); "
            "print(json.dumps([m.torch_cpu_capability, m.precisions['bf16']['torch'], m.cpu_flags]))")
    env = {k: v for k, v in os.environ.items() if k != "SEGVAE_CPU_BF16"} | AVX2_ENV
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    capability, bf16, flags = json.loads(out.stdout.strip().splitlines()[-1])
    assert capability in ("AVX2", "DEFAULT") and bf16 == EMULATED
    assert flags == machine(with_gpu=False).cpu_flags


def test_segvae_run_held_to_avx2_leaves_out_bf16_and_estimates(tmp_path):
    """`segvae run --dry-run` under the switches: the printed reason, the calibrated estimate, the plan."""
    env = {k: v for k, v in os.environ.items() if k != "SEGVAE_CPU_BF16"} | AVX2_ENV | {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--dry-run", "--experiments", "cvae-mnist",
                        "--out", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "bench: leaving out torch-bf16: bf16 is emulated on this machine" in r.stdout
    assert "estimate: about" in r.stdout and "of calibration on this machine" in r.stdout
    bench_line = next(line for line in r.stdout.splitlines() if line.strip().startswith("bench "))
    assert "--backends torch-eager,ort-fp32,ort-int8" in bench_line and "--peak-file" in bench_line
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
