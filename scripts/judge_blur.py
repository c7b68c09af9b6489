"""How sharp must a generated image be for the judge to read its class? Blur real test images.

The CIFAR-10 label swap scores far below the judge's accuracy on real images. This measures the
judge on the real test images after a Gaussian blur of growing width, with the mean absolute error
the blur introduces, so the error of a CVAE's reconstructions (`recon.mae` in its metrics.json) can
be read against it. It also scores the per-class mean image and means of a few same-class images:
what a model that outputs a blurry class prototype would get.

    python scripts/judge_blur.py --judge runs-cpu/judges/cifar10 --data-root ../shared/data --count 2000
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import get_experiment
from harness.data import build_splits
from harness.judge import load_judge


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = int(3 * sigma) + 1
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, -1, -1)
    return F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), kernel, groups=x.shape[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge", required=True, help="a judge folder (judge.json + judge.safetensors)")
    ap.add_argument("--data-root")
    ap.add_argument("--count", type=int, default=2000, help="test images to blur")
    ap.add_argument("--sigmas", default="0,0.5,0.8,1,1.5,2", help="blur widths in pixels, comma list")
    a = ap.parse_args()
    judge = load_judge(a.judge)
    dataset = judge.meta["dataset"]
    splits = build_splits(get_experiment(f"cvae-{dataset}"), a.data_root)
    test, train = splits["test"], splits["train"]
    x = test.images[:a.count].float() / 255
    y = test.labels[:a.count].numpy()
    print(f"judge {a.judge} ({dataset}), {len(y)} real test images")
    print("| blur sigma (px) | MAE vs original | judge accuracy |\n|---|---|---|")
    for s in (float(v) for v in a.sigmas.split(",")):
        xb = gaussian_blur(x, s)
        print(f"| {s:g} | {float((xb - x).abs().mean()):.4f} | {judge.score(xb.numpy(), y):.1%} |")

    xt, yt = train.images.float() / 255, train.labels
    classes = range(int(yt.max()) + 1)
    means = torch.stack([xt[yt == c].mean(0) for c in classes])
    g = torch.Generator().manual_seed(0)
    small, small_y = [], []
    for c in classes:
        idx = (yt == c).nonzero().flatten()
        for _ in range(20):
            small.append(xt[idx[torch.randperm(len(idx), generator=g)[:8]]].mean(0))
            small_y.append(c)
    print(f"class-mean images (training split): judge accuracy {judge.score(means.numpy(), np.array(list(classes))):.1%}")
    print(f"means of 8 random same-class training images (20 per class): judge accuracy "
          f"{judge.score(torch.stack(small).numpy(), np.array(small_y)):.1%}")


if __name__ == "__main__":
    main()
