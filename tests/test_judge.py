"""harness.judge: training writes safetensors + json, loading round-trips and never unpickles."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.judge import RECIPES, Judge, JudgeNet, load_judge, train_judge


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_train_writes_files_and_load_round_trips(dataset, data_root, tmp_path):
    from harness.config import get_experiment
    from harness.data import build_splits, tensors_of

    out = tmp_path / "judge"
    lines = []
    meta = train_judge(dataset, data_root, out_dir=out, epochs=1, seed=0, threads=1, log=lines.append)
    assert (out / "judge.safetensors").is_file() and (out / "judge.json").is_file()
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    on_disk = json.loads((out / "judge.json").read_text())
    assert on_disk["dataset"] == dataset and on_disk["epochs"] == 1
    for key in ("arch", "val_acc", "test_acc", "seconds", "precision", "accuracy", "fit", "fit_reasons"):
        assert key in on_disk
    acc = on_disk["accuracy"]
    assert set(acc) == {"real", "blur1", "blur2", "low_contrast", "class_means", "counts"}
    assert acc["real"] == on_disk["test_acc"] and acc["counts"]["class_means"] == 10
    assert on_disk["fit"] == (not on_disk["fit_reasons"])
    assert 0.0 <= on_disk["test_acc"] <= 1.0 and on_disk["test_acc"] == meta["test_acc"]
    assert any("epoch 1/1" in line for line in lines) and any("test accuracy" in line for line in lines)
    assert (out / "judge.safetensors").read_bytes()[:1] != b"\x80"  # not a pickle

    judge = load_judge(out)
    test = build_splits(get_experiment(f"cvae-{dataset}"), data_root)["test"]
    assert judge.score(*tensors_of(test)) == pytest.approx(meta["test_acc"])  # same model as the one trained
    x = torch.stack([test[i][0] for i in range(len(test))])
    a, b = judge.predict(x), load_judge(out).predict(x.numpy())
    assert a.dtype == np.int64 and a.shape == (len(test),)
    np.testing.assert_array_equal(a, b)


def test_score_is_share_classified_as_target(monkeypatch):
    judge = Judge(JudgeNet(**RECIPES["mnist"]["arch"]), {"dataset": "mnist"})
    preds = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    monkeypatch.setattr(judge, "predict", lambda images: preds)
    images = np.zeros((8, 1, 28, 28), np.float32)
    targets = [3, 0, 4, 0, 5, 0, 0, 6]  # 4 of 8 match
    assert judge.score(images, targets) == 0.5
    assert judge.score(images, torch.tensor(targets)) == 0.5
    assert judge.score(images, np.array(targets)) == 0.5
    assert judge.score(images, preds) == 1.0
    with pytest.raises(ValueError):
        judge.score(images, targets[:3])


def test_predict_checks_shape():
    judge = Judge(JudgeNet(**RECIPES["cifar10"]["arch"]), {"dataset": "cifar10"})
    assert judge.predict(np.random.rand(5, 3, 32, 32).astype(np.float32)).shape == (5,)
    with pytest.raises(ValueError, match="expected images"):
        judge.predict(np.zeros((2, 1, 32, 32), np.float32))


class _Plant:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _judge_dir(tmp_path):
    d = tmp_path / "j"
    d.mkdir()
    (d / "judge.json").write_text(json.dumps({"dataset": "mnist", "arch": RECIPES["mnist"]["arch"]}))
    return d


def test_load_judge_refuses_pickle_without_running_it(tmp_path):
    d = _judge_dir(tmp_path)
    marker = tmp_path / "PWNED"
    (d / "judge.safetensors").write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(UserError, match="judge.safetensors") as e:
        load_judge(d)
    assert "safetensors" in str(e.value)
    assert not marker.exists()
    # a torch.save checkpoint (zip + pickle) is refused the same way
    torch.save(JudgeNet(**RECIPES["mnist"]["arch"]).state_dict(), d / "judge.safetensors")
    with pytest.raises(UserError, match="judge.safetensors"):
        load_judge(d)
    assert not marker.exists()


def test_load_judge_missing_files(tmp_path):
    with pytest.raises(UserError, match="judge.json"):
        load_judge(tmp_path)
    d = _judge_dir(tmp_path)
    with pytest.raises(UserError, match="judge.safetensors"):
        load_judge(d)


def test_unknown_dataset_is_user_error(tmp_path):
    with pytest.raises(UserError, match="pets"):
        train_judge("pets", out_dir=tmp_path)
