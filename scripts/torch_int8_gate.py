"""Does torch-int8 (PT2E + x86 inductor quantizer, compiled with freezing) pass the accuracy gate on
the UNet and both CVAEs, on the WHOLE test split of real data? (issue 24; a check, not a timing.)

Trains small runs (few epochs, narrow models: enough for a non-trivial Dice and label swap), the
two label-swap judges, exports each run with int8 (class-stratified calibration), then benches
torch-eager, torch-int8, ort-fp32 and ort-int8 on the whole test split, offline, 3 short rounds, a
small matmul probe. Prints each backend's gate with its bootstrap margin and the verdict lines;
exit 1 when torch-int8 fails the gate on any model. Runs already in --out are reused.

    python scripts/torch_int8_gate.py --data-root ../shared/data --out runs-int8-gate
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

RUNS = {  # experiment -> training flags (small, fast on 2 cores)
    "unet-mp-tr-bce": ["--epochs", "2", "--image-size", "64", "--base-channels", "8"],
    "cvae-mnist": ["--epochs", "1", "--base-channels", "16", "--max-train-samples", "4000"],
    "cvae-cifar10": ["--epochs", "1", "--base-channels", "16", "--max-train-samples", "4000"],
}
JUDGE_EPOCHS = "1"
BACKENDS = ["torch-eager", "torch-int8", "ort-fp32", "ort-int8"]


def _segvae(*args: str) -> None:
    cmd = [sys.executable, "-m", "harness", *args]
    print("+ segvae " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="the real data (e.g. ../shared/data)")
    ap.add_argument("--out", default="runs-int8-gate", help="folder for the runs, judges and bench.json")
    a = ap.parse_args(argv)
    out, t0 = Path(a.out), time.perf_counter()
    for exp, flags in RUNS.items():
        run = out / exp
        if not (run / "model.safetensors").is_file():
            _segvae("train", exp, "--data-root", a.data_root, "--out", str(run), "--log-with", "none", *flags)
        if not (run / "onnx" / "export.json").is_file():
            _segvae("export", str(run), "--quantize", "int8", "--data-root", a.data_root)
    for ds in ("mnist", "cifar10"):
        if not (out / "judges" / ds / "judge.json").is_file():
            _segvae("judge", ds, "--data-root", a.data_root, "--out", str(out / "judges" / ds), "--epochs", JUDGE_EPOCHS)

    from harness.bench import BenchConfig, run_bench
    from harness.bench.records import gate_margin_text
    from harness.judge import load_judges

    cfg = BenchConfig(backends=BACKENDS, scenarios=["offline"], batch_sizes=[8], rounds=3, min_queries=8,
                      min_duration=0.2, warmup=1, peak_size=256, peak_reps=2)
    doc = run_bench([out / e for e in RUNS], cfg, data_root=a.data_root, out=out / "bench.json",
                    argv=["python", "scripts/torch_int8_gate.py", *(argv or sys.argv[1:])],
                    judge_fn=load_judges(out / "judges"))
    print("\naccuracy gate on the whole test split (issue 24):")
    failed = []
    for r in doc["results"]:
        g = r["accuracy_gate"]
        print(f"  {r['run']:<16} {r['backend']:<12} n={r['accuracy_count']:<5} {g['metric']}: "
              f"{'pass' if g['pass'] else 'FAIL'}{' (marginal)' if g.get('marginal') else ''} "
              f"{gate_margin_text(g) or ('MAE ' + format(g['mae'], '.4f') if g.get('mae') is not None else '')}")
        if r["backend"] == "torch-int8" and not g["pass"]:
            failed.append(r["run"])
    missing = [e for e in RUNS if not any(r["run"] == e and r["backend"] == "torch-int8" for r in doc["results"])]
    print(f"\ntorch-int8: {'FAILED the gate on ' + ', '.join(failed) if failed else 'passed the gate on every model'}"
          f"{'; not measured on ' + ', '.join(missing) + ' (see skipped)' if missing else ''}; "
          f"{time.perf_counter() - t0:.0f} s; bench.json: {out / 'bench.json'}")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
