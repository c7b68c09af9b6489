"""The judge is measured before its swap scores count: blurred and low-contrast real images, class means."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.degrade import class_means, gaussian_blur, low_contrast, random_degrade
from harness.judge import FIT_THRESHOLDS, RECIPES, judge_fitness, judge_is_current, judge_settings, load_judge, train_judge
from tests.fixtures import write_idx_images, write_idx_labels


def test_gaussian_blur_matches_a_hand_built_kernel():
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0  # a delta: the blur returns its kernel
    out = gaussian_blur(x, 1.0)[0, 0]
    t = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-t ** 2 / 2)
    k = k / k.sum()
    torch.testing.assert_close(out[4:11, 4:11], k[:, None] * k[None, :])
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)  # a constant image is unchanged
    assert gaussian_blur(flat, 0) is flat


def test_low_contrast_halves_deviations_around_the_image_mean():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    torch.testing.assert_close(low_contrast(x, 0.5), torch.tensor([[[[0.25, 0.75], [0.75, 0.25]]]]))


def test_random_degrade_stays_in_range_and_is_seeded():
    x = torch.rand(16, 1, 28, 28)
    spec = RECIPES["mnist"]["degrade"]
    a = random_degrade(x, spec, torch.Generator().manual_seed(3))
    b = random_degrade(x, spec, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape and not torch.equal(a, x)


def test_class_means_are_per_class_averages():
    imgs = torch.tensor([[[[0.0]]], [[[2.0]]], [[[5.0]]]])
    means, labels = class_means(imgs, torch.tensor([1, 1, 3]), 4)
    assert labels.tolist() == [1, 3] and means.flatten().tolist() == [1.0, 5.0]


def stroke_digits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 "digits" a person tells apart at a glance, shifted or blurred: class c is a thick line
    through the centre at angle 18c degrees, jittered in position, angle and brightness, on noise."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    out = np.empty((len(labels), 28, 28), np.uint8)
    for i, c in enumerate(labels):
        a = np.deg2rad(18 * int(c) + rng.uniform(-4, 4))
        cy, cx = 13.5 + rng.uniform(-2, 2, 2)
        along = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        across = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        line = (np.abs(across) < 1.6) & (np.abs(along) < 10)
        out[i] = np.clip(rng.integers(0, 40, (28, 28)) + line * rng.uniform(180, 255), 0, 255)
    return out


def make_strokes(root, n_train: int, n_test: int):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", stroke_digits(labels, rng))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """Class-separable fixture digits (stroke_digits), and a judge trained on them in seconds."""
    root = make_strokes(tmp_path_factory.mktemp("sep"), n_train=400, n_test=100)
    out = tmp_path_factory.mktemp("judge")
    meta = train_judge("mnist", root, out_dir=out, epochs=4, threads=1, precision="fp32", log=lambda s: None)
    return root, out, meta


def test_the_judge_recognises_its_class_means_and_is_fit(separable):
    root, out, meta = separable
    acc = meta["accuracy"]
    assert acc["class_means"] == 1.0 and acc["counts"]["class_means"] == 10
    assert acc["real"] >= FIT_THRESHOLDS["mnist"]["real"] and acc["blur1"] >= FIT_THRESHOLDS["mnist"]["blur1"]
    assert meta["fit"] is True and meta["fit_reasons"] == []
    assert json.loads((out / "judge.json").read_text())["accuracy"] == acc


def test_blurred_real_images_are_scored_by_the_judge(separable):
    """judge_fitness's numbers are the judge's own scores of the degraded real test split."""
    from harness.config import get_experiment
    from harness.data import build_splits
    from harness.data import tensors_of

    root, out, meta = separable
    judge = load_judge(out)
    splits = build_splits(get_experiment("cvae-mnist"), root)
    x, y = tensors_of(splits["test"])
    assert meta["accuracy"]["blur1"] == judge.score(gaussian_blur(x, 1.0), y)
    assert meta["accuracy"]["blur2"] == judge.score(gaussian_blur(x, 2.0), y)
    assert meta["accuracy"]["low_contrast"] == judge.score(low_contrast(x, 0.5), y)
    # a judge that reads nothing is unfit, with its reasons
    blank = judge_fitness(judge, "mnist", (torch.zeros(20, 1, 28, 28), torch.arange(20) % 10), tensors_of(splits["train"]))
    assert blank["fit"] is False and any(r.startswith("real") for r in blank["fit_reasons"])


def test_precision_is_a_recorded_setting(separable):
    root, out, meta = separable
    assert meta["precision"] == "fp32"
    assert judge_is_current(out, judge_settings("mnist", root, 4, precision="fp32"))
    assert not judge_is_current(out, judge_settings("mnist", root, 4, precision="bf16"))
    from harness.errors import UserError

    with pytest.raises(UserError, match="precision"):
        judge_settings("mnist", root, 4, precision="fp16")
