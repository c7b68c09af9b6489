#!/usr/bin/env bash
# One prepared GPU check (about 8 minutes on one GPU): installs the `gpu` extra (onnxruntime-gpu in
# place of onnxruntime; TensorRT from pip when installable), trains a UNet and a CVAE briefly in
# fp32/bf16/fp16 on CUDA, exports them (fp32 + fp16 graphs), benches torch on CUDA against ONNX
# Runtime's CUDA (and TensorRT) provider at batch 1 and 32, and writes ${OUT:-gpu_check_out}/summary.json.
# It exits non-zero if any stage silently ran on the CPU (metrics.json `device`, bench records'
# `device`, the ORT session's provider). Without CUDA it says "no CUDA: ...", runs the CPU-side checks
# (tests/test_gpu_paths.py) and exits 0.
#
# Environment: PYTHON (default .venv/bin/python, made by scripts/setup.sh), OUT, DATA_ROOT (default:
# the embedded sample), GPU_CHECK_TENSORRT=0 skips the TensorRT install, GPU_CHECK_PYTEST_ARGS (pytest
# arguments of the no-CUDA path).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
  bash scripts/setup.sh
  PY=.venv/bin/python
fi

cpu_checks() {
  # shellcheck disable=SC2086  # GPU_CHECK_PYTEST_ARGS is a list of pytest arguments
  "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py ${GPU_CHECK_PYTEST_ARGS:--k "not test_gpu_check"}
}

why=$("$PY" - <<'EOF'
import torch
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU "
          "(torch.cuda.is_available() is False)")
EOF
)
if [ -n "$why" ]; then
  echo "no CUDA: $why; running the CPU-side checks only"
  cpu_checks
  exit 0
fi

mkdir -p "$OUT"
step() { echo "== gpu_check: $* ($(date -u +%H:%M:%S))"; }

step "install the gpu extra: onnxruntime-gpu in place of onnxruntime (both provide the onnxruntime module)"
"$PY" -m pip install -q -e ".[gpu]"
"$PY" -m pip uninstall -y -q onnxruntime || true
"$PY" -m pip install -q --force-reinstall --no-deps "onnxruntime-gpu[cuda,cudnn]"
if [ "${GPU_CHECK_TENSORRT:-1}" != 0 ]; then
  step "install TensorRT from pip (optional: ort-tensorrt is skipped without it)"
  timeout 240 "$PY" -m pip install -q tensorrt || echo "TensorRT is not installable here: ort-tensorrt will be skipped"
fi

data=()
[ -n "${DATA_ROOT:-}" ] && data=(--data-root "$DATA_ROOT" --max-train-samples 2048)
UNET=(unet-mp-tr-bce --base-channels 32 --image-size 128 --batch-size 32 --epochs 2 --num-workers 4)
CVAE=(cvae-mnist --base-channels 32 --batch-size 256 --epochs 2 --num-workers 4)
for prec in no bf16 fp16; do
  step "train the UNet, mixed precision $prec"
  "$PY" -m harness train "${UNET[@]}" "${data[@]}" --mixed-precision "$prec" --out "$OUT/runs/unet-$prec"
done
for prec in bf16 fp16; do
  step "train the CVAE, mixed precision $prec"
  "$PY" -m harness train "${CVAE[@]}" "${data[@]}" --mixed-precision "$prec" --out "$OUT/runs/cvae-$prec"
done

for run in unet-bf16 cvae-bf16; do
  step "export $run (fp32 + fp16 graphs; parity on the CPU provider)"
  "$PY" -m harness export "$OUT/runs/$run" "${data[@]:0:2}" --fp16
done

step "ONNX Runtime on CUDA: a session that falls back to the CPU is an error here"
"$PY" - "$OUT/runs/unet-bf16/onnx/model.onnx" <<'EOF'
import sys
import numpy as np
from exports.session import OrtSession
s = OrtSession(sys.argv[1], device="cuda:0", tensorrt=False, require_device=True)
x = np.zeros((2, 3, 128, 128), np.float32)
b = s.bind({"image": x}); b.run()
assert np.allclose(b.outputs()[0], s.run({"image": x})["logits"], atol=1e-3), "IO binding differs from run()"
print(f"ORT {s.device}: providers {s.providers}")
EOF

step "bench torch on CUDA vs ORT CUDA / TensorRT"
"$PY" -m harness bench "$OUT/runs/unet-bf16" "${data[@]:0:2}" --device cuda \
  --backends torch-eager,torch-bf16,torch-fp16,ort-cuda,ort-cuda-fp16,ort-tensorrt --batch-sizes 1,32 \
  --out "$OUT/bench.json"

step "summary"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
problems, train = [], {}
for m in sorted(out.glob("runs/*/metrics.json")):
    d = json.loads(m.read_text())
    train[m.parent.name] = {"device": d.get("device"), "device_name": d.get("device_name"),
                            "mixed_precision": d.get("mixed_precision"),
                            "train_samples_per_s": d.get("train_samples_per_s")}
    if d.get("device") != "cuda":
        problems.append(f"{m}: trained on {d.get('device')!r}, not cuda")
bench = json.loads((out / "bench.json").read_text())
rows = []
for r in bench.get("results", []):
    if r.get("batch_size") not in (1, 32) or r.get("rank") not in (None, 0):
        continue
    rows.append({k: r.get(k) for k in ("backend", "scenario", "batch_size", "device", "samples_per_s")}
                | {"p50_ms": (r.get("latency_ms") or {}).get("p50")})
    if not str(r.get("device") or "").startswith("cuda"):
        problems.append(f"bench {r.get('backend')} {r.get('scenario')} bs {r.get('batch_size')}: "
                        f"ran on {r.get('device')!r}, not cuda")
if not rows:
    problems.append("bench.json holds no record at batch 1 or 32")
summary = {"train": train, "bench": rows, "bench_skipped": bench.get("skipped"), "problems": problems}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
if problems:
    print("gpu_check: FAILED: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"gpu_check: every stage ran on CUDA; summary in {out / 'summary.json'}")
EOF
