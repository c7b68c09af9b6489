"""scripts/judge_blur.py: every class sampled (stratified, seeded); the JSON names the judge it used."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import torch

from tests.helpers import REPO


def _script():
    spec = importlib.util.spec_from_file_location("judge_blur", REPO / "scripts" / "judge_blur.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stratified_takes_the_same_share_of_every_class_and_is_seeded():
    from harness.data import stratified_indices

    labels = np.arange(10).repeat(30)  # class-sorted, like the CIFAR-10 test folders
    idx = stratified_indices(labels, 50, seed=3)
    assert np.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    assert np.array_equal(idx, stratified_indices(labels, 50, 3)) and not np.array_equal(idx, stratified_indices(labels, 50, 4))
    assert np.bincount(labels[stratified_indices(labels, 1000, 0)]).tolist() == [30] * 10  # capped by the class size


def test_writes_counts_and_the_judge_it_used(tmp_path, data_root):
    from harness.config import get_experiment
    from harness.data import build_splits, stratified_indices
    from harness.judge import load_judge, train_judge

    jb = _script()
    jdir = tmp_path / "judge"
    train_judge("cifar10", data_root, out_dir=jdir, epochs=1, threads=1, precision="fp32", log=lambda s: None)
    out = tmp_path / "blur.json"
    jb.main(["--judge", str(jdir), "--data-root", str(data_root), "--count", "10", "--sigmas", "0,1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["count"] == 10 and doc["per_class"] == {str(c): 1 for c in range(10)}
    assert doc["judge"]["path"] == str(jdir) and doc["judge"]["settings"]["precision"] == "fp32"
    assert doc["judge"]["settings"]["dataset"] == "cifar10" and "history" not in doc["judge"]["settings"]
    # sigma 0 is the judge's own score of the sampled real images
    test = build_splits(get_experiment("cvae-cifar10"), data_root)["test"]
    idx = torch.from_numpy(stratified_indices(test.labels.numpy(), 10, 0))
    judge = load_judge(jdir)
    assert doc["blur"][0] == {"sigma": 0.0, "mae": 0.0,
                              "accuracy": judge.score(test.images[idx].float() / 255, test.labels[idx])}
