"""How sharp must a generated image be for the judge to read its class? Blur real test images.

The CIFAR-10 label swap scores far below the judge's accuracy on real images. This measures the
judge on real test images after a Gaussian blur of growing width (harness.degrade.gaussian_blur,
the same blur as the judge's fitness check), with the mean absolute error the blur introduces, so
the error of a CVAE's reconstructions (`recon.mae` in its metrics.json) can be read against it. It
also scores the per-class mean image and means of a few same-class images: what a model that
outputs a blurry class prototype would get.

The test folders are class-sorted, so the images are drawn per class (harness.data.stratified_indices,
seeded): every class, in proportion to its size (equal classes: count // classes each). The figures, the count per class and the judge used (its
path and settings) go to --out as JSON.

    python scripts/judge_blur.py --judge runs-cpu/judges/cifar10 --data-root ../shared/data --count 2000 \\
        --out runs-cpu/judge_blur-cifar10.json
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from harness.config import get_experiment
from harness.data import build_splits, stratified_indices
from harness.degrade import class_means, gaussian_blur
from harness.errors import UserError
from harness.io import atomic_write_json
from harness.judge import load_judge


def measure(judge, test, train, count: int, sigmas, seed: int = 0) -> dict:
    """The blur table, class-mean and small-mean scores, and what was sampled."""
    idx = torch.from_numpy(stratified_indices(test.labels.numpy(), count, seed))
    x, y = test.images[idx].float() / 255, test.labels[idx]
    rows = []
    for s in sigmas:
        xb = gaussian_blur(x, s)
        rows.append({"sigma": s, "mae": float((xb - x).abs().mean()), "accuracy": judge.score(xb, y)})
    xt, yt = train.images.float() / 255, train.labels
    n_classes = judge.model.head.out_features
    means, mean_y = class_means(xt, yt, n_classes)
    g = torch.Generator().manual_seed(seed)
    small, small_y = [], []
    for c in mean_y.tolist():
        pool = torch.nonzero(yt == c).flatten()
        for _ in range(20):
            small.append(xt[pool[torch.randperm(len(pool), generator=g)[:8]]].mean(0))
            small_y.append(c)
    return {"count": int(len(y)), "per_class": {str(c): int((y == c).sum()) for c in sorted(set(y.tolist()))},
            "seed": seed, "blur": rows, "class_means_accuracy": judge.score(means, mean_y),
            "small_means_accuracy": judge.score(torch.stack(small), np.array(small_y)) if small else float("nan")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge", required=True, help="a judge folder (judge.json + judge.safetensors)")
    ap.add_argument("--data-root")
    ap.add_argument("--count", type=int, default=2000, help="test images to blur, spread evenly over the classes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigmas", default="0,0.5,0.8,1,1.5,2", help="blur widths in pixels, comma list")
    ap.add_argument("--out", help="write the figures and the judge used to this JSON file")
    a = ap.parse_args(argv)
    try:
        sigmas = [float(v) for v in a.sigmas.split(",")]
    except ValueError:
        raise UserError(f"--sigmas {a.sigmas!r}: expected a comma list of numbers") from None
    if a.count < 1:
        raise UserError(f"--count {a.count}: expected a positive integer")
    judge = load_judge(a.judge)
    dataset = judge.meta["dataset"]
    splits = build_splits(get_experiment(f"cvae-{dataset}"), a.data_root)
    doc = measure(judge, splits["test"], splits["train"], a.count, sigmas, a.seed)
    print(f"judge {a.judge} ({dataset}), {doc['count']} real test images, per class {doc['per_class']}")
    print("| blur sigma (px) | MAE vs original | judge accuracy |\n|---|---|---|")
    for r in doc["blur"]:
        print(f"| {r['sigma']:g} | {r['mae']:.4f} | {r['accuracy']:.1%} |")
    print(f"class-mean images (training split): judge accuracy {doc['class_means_accuracy']:.1%}")
    print(f"means of 8 random same-class training images (20 per class): judge accuracy "
          f"{doc['small_means_accuracy']:.1%}")
    if a.out:
        settings = {k: v for k, v in judge.meta.items() if k not in ("history",)}
        atomic_write_json(a.out, {**doc, "dataset": dataset, "data_root": a.data_root, "sigmas": sigmas,
                                  "judge": {"path": str(a.judge), "settings": settings}})
        print(f"wrote {a.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
