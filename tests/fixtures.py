"""Tiny SYNTHETIC inputs in the real on-disk layouts, so the real loaders and readers run in unit
tests without shared/data. Everything is deterministic (fixed numpy seeds).

Datasets:
    make_pets(root)       -> root/oxford-iiit-pet/{images,annotations/trimaps,annotations/*.txt}
    make_mnist(root)      -> root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    make_cifar_png(root)  -> root/cifar10-png/{train,test}/<class>/*.png
    make_all(root)        -> all three under one root
Stage outputs with hand-picked figures (what the report and `segvae compare` read):
    write_results(runs)   -> runs/{RUN/{config,metrics}.json, judges/, bench.json, pipeline.json}
    bench_v2(), bench_v1() -> bench.json documents in schema v2 (intervals) and v1
"""
from __future__ import annotations

import re

import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# (breed, "class_id species breed_id") exactly as in the original list files
PET_BREEDS = (("Abyssinian", "1 1 1"), ("american_bulldog", "2 2 1"), ("Bengal", "6 1 2"))
PNG_AS_JPG = "Abyssinian_5"  # like the original release: PNG (RGBA) data in a .jpg file
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def pet_pair(rng: np.random.Generator, w: int, h: int, colour) -> tuple[np.ndarray, np.ndarray]:
    """A coloured ellipse "pet" on a textured background; trimap 1 inside, 3 on a thin ring, 2 outside."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    ax, ay = w * rng.uniform(0.18, 0.3), h * rng.uniform(0.18, 0.3)
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    stripes = 0.5 + 0.5 * np.sin((xx + 2 * yy) * rng.uniform(0.3, 0.8))
    bg = 60 + 80 * stripes[..., None] + rng.integers(0, 40, (h, w, 3))
    img = np.where((r < 1.0)[..., None], np.array(colour)[None, None] + rng.integers(-20, 20, (h, w, 3)), bg)
    trimap = np.full((h, w), 2, np.uint8)
    trimap[r < 1.12] = 3
    trimap[r < 0.88] = 1
    return np.clip(img, 0, 255).astype(np.uint8), trimap


def make_pets(root, n_trainval: int = 12, n_test: int = 6, size: tuple[int, int] = (72, 64)) -> Path:
    """n_* pairs split round-robin across 3 breeds; sizes vary around size=(width, height)."""
    root = Path(root)
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = {"Abyssinian": (200, 120, 40), "american_bulldog": (230, 230, 210), "Bengal": (170, 90, 30)}
    counter = {b: 0 for b, _ in PET_BREEDS}
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        lines = []
        for i in range(n):
            breed, ids = PET_BREEDS[i % 3]
            counter[breed] += 1
            name = f"{breed}_{counter[breed] + (4 if breed == 'Abyssinian' else 0)}"  # Abyssinian_5 comes first
            w, h = size[0] + int(rng.integers(-8, 9)), size[1] + int(rng.integers(-8, 9))
            img, tri = pet_pair(rng, w, h, colours[breed])
            if name == PNG_AS_JPG:
                rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
                Image.fromarray(rgba, "RGBA").save(base / "images" / f"{name}.jpg", format="PNG")
            else:
                Image.fromarray(img).save(base / "images" / f"{name}.jpg", format="JPEG", quality=95)
            Image.fromarray(tri, "L").save(base / "annotations" / "trimaps" / f"{name}.png")
            lines.append(f"{name} {ids}\n")
        (base / "annotations" / f"{split}.txt").write_text("".join(lines))
    return root


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def mnist_digits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose content depends on the label: a bright bar whose row is 2 + 2*label."""
    x = rng.integers(0, 30, (len(labels), 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        x[i, 2 + 2 * int(y): 4 + 2 * int(y), 4:24] = 255
    return x


def make_mnist(root, n_train: int = 64, n_test: int = 32) -> Path:
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", mnist_digits(labels, rng))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_cifar_png(root, n_per_class_train: int = 4, n_per_class_test: int = 2) -> Path:
    """32x32 RGB PNGs whose mean colour encodes the class (class k: red channel ~ 20 + 22k)."""
    root = Path(root)
    rng = np.random.default_rng(2)
    for split, n in (("train", n_per_class_train), ("test", n_per_class_test)):
        for k, cls in enumerate(CIFAR10_CLASSES):
            d = root / "cifar10-png" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                img = rng.integers(0, 20, (32, 32, 3)) + np.array([20 + 22 * k, 100, 200 - 15 * k])
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{cls}_s_{j:06d}.png")
    return root


def make_all(root) -> Path:
    root = Path(root)
    make_pets(root)
    make_mnist(root)
    make_cifar_png(root)
    return root


# ---------------------------------------------------------------------------- stage outputs: report
UNET_METRICS = {  # experiment -> seed -> (test dice, test iou, test dice_mean, val dice, train_seconds, s/epoch)
    "unet-mp-tr-bce": {0: (0.80, 0.70, 0.78, 0.81, 100.0, 10.0), 1: (0.84, 0.72, 0.80, 0.83, 110.0, 11.0)},
    "unet-sc-up-dice": {0: (0.75, 0.60, 0.74, 0.76, 90.0, 9.0), 1: (0.79, 0.66, 0.77, 0.80, 96.0, 9.6)},
}
CVAE_TEST = {"elbo": 650.5, "nll": -700.25, "kl": 49.75, "bpd": 6.789, "count": 100}
SWAP_LABELS = [[i % 10, (i + 3) % 10] for i in range(25)]


def write_png(path: Path, colour=(200, 30, 30), size=(10, 10)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path)
    return path.read_bytes()


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_unet_run(runs: Path, name: str, seed: int, vals) -> None:
    dice, iou, dice_mean, val_dice, secs, spe = vals
    d = runs / f"{name}-s{seed}"
    down, up = ("maxpool", "transpose") if "mp" in name else ("strided", "upsample")
    write_json(d / "config.json", {"name": name, "task": "segmentation", "dataset": "pets", "loss": name.rsplit("-", 1)[1],
                               "model": {"down": down, "up": up, "base_channels": 8}, "epochs": 2, "seed": seed})
    write_png(d / "samples" / "overlays.png", (10 * seed, 100, 50))
    write_json(d / "metrics.json", {
        "experiment": name, "task": "segmentation", "seed": seed, "num_processes": 1, "mixed_precision": "no",
        "epochs_run": 2, "best_epoch": 2, "train_seconds": secs, "seconds_per_epoch": spe, "train_samples_per_s": 5.0,
        "val": {"dice": val_dice, "iou": 0.5, "dice_mean": 0.5, "iou_mean": 0.5, "count": 4, "loss": 0.3},
        "test": {"dice": dice, "iou": iou, "dice_mean": dice_mean, "iou_mean": 0.6, "count": 6, "loss": 0.3},
        "history": [{"epoch": 1, "train_loss": 0.6, "val": {"dice": val_dice - 0.1}, "seconds": spe},
                    {"epoch": 2, "train_loss": 0.4, "val": {"dice": val_dice}, "seconds": spe}],
        "samples": {"overlays": "samples/overlays.png"}})


def write_results(runs: Path, bench: bool = True) -> dict:
    for name, seeds in UNET_METRICS.items():
        for seed, vals in seeds.items():
            write_unet_run(runs, name, seed, vals)
    c = runs / "cvae-mnist"
    write_json(c / "config.json", {"name": "cvae-mnist", "task": "cvae", "dataset": "mnist", "loss": "elbo",
                               "model": {"latent_dim": 16}, "seed": 0})
    grid = write_png(c / "samples" / "label_swap_grid.png", (1, 2, 3), (20, 20))
    write_png(c / "samples" / "label_swap_sources.png", (4, 5, 6), (20, 20))
    write_json(c / "metrics.json", {
        "experiment": "cvae-mnist", "task": "cvae", "seed": 0, "epochs_run": 3, "best_epoch": 3, "train_seconds": 30.0,
        "seconds_per_epoch": 10.0, "val": {**CVAE_TEST}, "test": CVAE_TEST,
        "history": [{"epoch": 1, "train_loss": -100.0, "val": {"elbo": 600.0}}],
        # the figure path tries to escape runs_dir: it must be refused, and the grid + sources used instead
        "samples": {"grid": "samples/label_swap_grid.png", "figure": "../../etc/passwd",
                    "sources": "samples/label_swap_sources.png", "labels": SWAP_LABELS},
        "recon": {"mae": 0.0567, "judge_acc_true_label": None},
        "judge": {"test_acc_real": 0.9812, "grid_swap_acc": 0.88, "test_swap_acc": 0.9425, "test_swap_count": 8000}})
    write_json(runs / "judges" / "mnist" / "judge.json", {"dataset": "mnist", "arch": {}, "val_acc": 0.985,
                                                       "test_acc": 0.9812, "epochs": 6, "seconds": 40.0})
    records = []
    if bench:
        base = {"run": "unet-mp-tr-bce-s0", "experiment": "unet-mp-tr-bce", "task": "segmentation", "rank": None}
        for backend, prec, p50, thr, dice in (("torch-eager", "fp32", 10.0, 100.0, 0.80),
                                              ("ort-fp32", "fp32", 5.0, 250.0, 0.80)):
            records.append({**base, "backend": backend, "precision": prec, "scenario": "single-stream",
                            "batch_size": 1, "samples_per_s": 1000 / p50,
                            "latency_ms": {"p50": p50, "p90": p50 * 1.5, "p99": p50 * 2, "max": p50 * 3},
                            "pct_of_peak": 12.5, "dice": dice, "dice_delta": 0.0})
            for bs, k in ((1, 0.5), (8, 1.0)):
                records.append({**base, "backend": backend, "precision": prec, "scenario": "offline",
                                "batch_size": bs, "samples_per_s": thr * k, "latency_ms": None, "pct_of_peak": None})
        cbase = {"run": "cvae-mnist", "experiment": "cvae-mnist", "task": "cvae", "rank": None, "batch_size": 1,
                 "scenario": "single-stream", "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5}}
        records += [{**cbase, "backend": "torch-eager", "precision": "fp32", "judge_acc": 0.76, "max_abs_err": 0.0,
                     "accuracy_count": 200},
                    {**cbase, "backend": "ort-fp32", "precision": "fp32", "judge_acc": 0.72, "max_abs_err": 3e-7,
                     "accuracy_count": 200}]
        write_json(runs / "bench.json", {
            "version": 1, "env": {"cpu": "Test CPU <script>alert(1)</script>", "cores": 2, "torch": "2.x",
                                  "command": "segvae bench runs/x"},
            "peak": {"fp32_gflops": 200.0}, "skipped": {"ort-cuda": "no CUDA <GPU>"}, "results": records})
    write_json(runs / "pipeline.json", {"preset": "quick", "commands": ["segvae train unet-mp-tr-bce"],
                                    "wall_seconds": 12.5, "data_root": "/data", "reused_runs": ["cvae-mnist", "judges/mnist"]})
    return {"grid": grid}


# ---------------------------------------------------------------------------- stage outputs: bench.json
# (backend, precision) -> (offline samples/s at bs 1, at bs 8, single-stream p50 ms, Dice)
BENCH_UNET = {("torch-eager", "fp32"): (40.0, 95.0, 24.0, 0.8012), ("ort-fp32", "fp32"): (55.0, 120.0, 17.5, 0.8012),
        ("ort-int8", "int8"): (70.0, 160.0, 13.0, 0.7984)}
BENCH_CI = 0.02  # half width of the 95% interval, relative


def _ci(v: float) -> list[float]:
    return [round(v * (1 - BENCH_CI), 4), round(v * (1 + BENCH_CI), 4)]


def _lat(p50: float) -> dict:
    """latency_ms and latency_ms_ci of a record, as schema v2 writes them."""
    lat = {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.5, "max": p50 * 2, "mean": p50 * 1.05, "std": p50 * 0.1}
    return {"latency_ms": lat, "latency_ms_ci": {k: _ci(v) for k, v in lat.items()}}


def bench_v2() -> dict:
    """A bench.json in schema v2's shape: medians with intervals, accuracy verdicts, stability."""
    results = []
    for (backend, prec), (off1, off8, p50, dice) in BENCH_UNET.items():
        base = {"run": "unet-mp-tr-bce", "experiment": "unet-mp-tr-bce", "task": "segmentation", "backend": backend,
                "precision": prec, "rank": None, "world_size": 1, "threads": 2, "rounds": 5, "ci_coverage": 0.9375,
                "dice": dice, "iou": dice - 0.1, "dice_delta": dice - 0.8012, "accuracy_count": 238,
                "accuracy_pass": True, "accuracy_gate": {"pass": True, "metric": "Dice", "target": 0.99, "reasons": []},
                "stable": True, "unstable_reasons": [], "loadgen_valid": False}
        results.append({**base, "scenario": "single-stream", "batch_size": 1, "samples_per_s": 1000 / p50,
                        "samples_per_s_ci": _ci(1000 / p50), **_lat(p50)})
        for bs, thr in ((1, off1), (8, off8)):
            results.append({**base, "scenario": "offline", "batch_size": bs, "samples_per_s": thr,
                            "samples_per_s_ci": _ci(thr), **_lat(1000 * bs / thr)})
        results.append({**base, "scenario": "server", "batch_size": 1, "samples_per_s": 20.0,
                        "samples_per_s_ci": _ci(20.0), **_lat(p50 * 1.1), "target_rate": 20.0, "bound_met": True})
    for backend, judge in (("torch-eager", 0.76), ("ort-fp32", 0.75)):
        results.append({"run": "cvae-mnist", "experiment": "cvae-mnist", "task": "cvae", "backend": backend,
                        "precision": "fp32", "scenario": "single-stream", "batch_size": 1, "rank": None,
                        "samples_per_s": 900.0, "samples_per_s_ci": _ci(900.0), **_lat(1.1), "judge_acc": judge,
                        "max_abs_err": 1e-6, "accuracy_count": 1000, "accuracy_pass": True,
                        "accuracy_gate": {"pass": True, "metric": "judge success + MAE"},
                        "stable": True, "unstable_reasons": [], "loadgen_valid": False})
    results.append({**results[0], "rank": 0})  # a per-rank record: never compared
    return {"version": 2, "env": {"cpu_model": "Test CPU", "cpu_flags": ["avx2"], "torch": "2.5", "git_commit": "abc"},
            "config": {"threads": 2, "rounds": 5, "min_duration": 0.5}, "skipped": {},
            "results": results}


def bench_v1() -> dict:
    """The same figures without intervals or accuracy verdicts (schema v1)."""
    doc = bench_v2()
    for r in doc["results"]:
        for k in ("samples_per_s_ci", "latency_ms_ci", "accuracy_count", "accuracy_pass", "accuracy_gate", "stable",
                  "unstable_reasons", "loadgen_valid", "rounds", "ci_coverage"):
            r.pop(k, None)
    doc["version"] = 1
    doc["config"] = {"accuracy_samples_used": {"unet-mp-tr-bce": 238, "cvae-mnist": 1000}}
    doc["env"] = {"cpu_model": "Test CPU"}
    return doc


def md_tables(md: str) -> list[dict]:
    """Every markdown table as {"columns": [...], "rows": [[...]]}."""
    tables, cur = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cur is None:
                cur = {"columns": cells, "rows": []}
            elif not all(set(c) <= {"-"} for c in cells):
                cur["rows"].append(cells)
        elif cur is not None:
            tables.append(cur)
            cur = None
    if cur is not None:
        tables.append(cur)
    return tables
