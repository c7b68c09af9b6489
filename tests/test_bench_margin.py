"""The accuracy gate's margin (a paired per-image bootstrap interval of the metric ratio; `marginal`
when it straddles the target) on hand-built per-image figures, and the bench's one-line verdicts
(fastest accurate ORT vs fastest accurate PyTorch, int8 vs fp32, vs eager) on hand-built records."""
from __future__ import annotations

import numpy as np
import pytest

from exports.accuracy_gate import paired_bootstrap_ratio
from harness.bench import accuracy, stats
from harness.bench.records import accuracy_text, gate_margin_text
from harness.bench.verdicts import verdicts


def _hits(n_hit: int, n: int) -> np.ndarray:
    return np.stack([np.r_[np.ones(n_hit), np.zeros(n - n_hit)], np.ones(n)], axis=1)


def test_bootstrap_interval_is_paired_seeded_and_brackets_the_ratio():
    rng = np.random.default_rng(0)
    ref = (rng.random(2000) < 0.9).astype(float)
    same = paired_bootstrap_ratio(np.stack([ref, np.ones(2000)], 1), np.stack([ref, np.ones(2000)], 1), seed=1)
    assert same["lo"] == same["hi"] == 1.0  # identical per-image results: no spread at all when paired
    flip = ref.copy()
    flip[np.flatnonzero(ref)[:18]] = 0  # 18 hits of ~1800 lost: ratio 0.99
    a, b = np.stack([flip, np.ones(2000)], 1), np.stack([ref, np.ones(2000)], 1)
    ci = paired_bootstrap_ratio(a, b, seed=1)
    point = flip.sum() / ref.sum()
    assert ci["lo"] < point < ci["hi"] and ci["coverage"] == 0.95 and ci["n"] == 2000
    assert ci == paired_bootstrap_ratio(a, b, seed=1) and ci != paired_bootstrap_ratio(a, b, seed=2)
    # pairing matters: 18 losses out of 2000 shared images is a tight interval (unpaired would be ~+-2%)
    assert ci["hi"] - ci["lo"] < 0.012


def test_gate_marks_a_straddling_ratio_marginal():
    """Hand-built judge hits: 991/1000 against 1000/1000 passes 0.99 by a hair and its interval
    straddles 0.99 (marginal); 700/1000 fails clearly; the same hits pass clearly. Dice parts too."""
    ref = {"judge_acc": 1.0, "_parts": _hits(1000, 1000), "mean_abs_err": 0.0}
    close = {"judge_acc": 0.991, "_parts": _hits(991, 1000), "mean_abs_err": 0.001}
    g = accuracy.gate("cvae", close, ref, 0.99, seed=0)
    assert g["pass"] is True and g["marginal"] is True
    assert g["ratio_ci"]["lo"] < 0.99 <= g["ratio_ci"]["hi"]
    bad = accuracy.gate("cvae", {"judge_acc": 0.7, "_parts": _hits(700, 1000), "mean_abs_err": 0.001}, ref, 0.99)
    assert bad["pass"] is False and bad["marginal"] is False and bad["ratio_ci"]["hi"] < 0.99
    good = accuracy.gate("cvae", {**ref, "mean_abs_err": 0.0}, ref, 0.99)
    assert good["pass"] is True and good["marginal"] is False and good["ratio_ci"]["lo"] == 1.0
    # segmentation: per-image (2 x intersection, predicted + target); dataset Dice = their sums' ratio
    seg_ref = {"dice": 0.8, "_parts": np.tile([80.0, 100.0], (500, 1))}
    parts = np.tile([80.0, 100.0], (500, 1))
    parts[:5] = [0.0, 100.0]  # 5 images of 500 lost entirely: ratio 0.99
    seg = accuracy.gate("segmentation", {"dice": parts[:, 0].sum() / parts[:, 1].sum(), "_parts": parts}, seg_ref, 0.99)
    assert seg["ratio"] == pytest.approx(0.99) and seg["marginal"] is True
    # the tables say it
    rec = {"task": "cvae", "mean_abs_err": 0.001, "judge_acc": 0.991, "accuracy_count": 1000, "accuracy_pass": True,
           "accuracy_gate": g}
    assert accuracy_text(rec).endswith("pass marginal") and "straddles 0.99: marginal" in gate_margin_text(g)
    # no per-image figures (a judge that returns a share only, or no judge): no interval, never marginal
    share_only = accuracy.gate("cvae", {"judge_acc": 0.991, "mean_abs_err": 0.0}, {"judge_acc": 1.0}, 0.99)
    assert share_only["ratio_ci"] is None and share_only["marginal"] is False


def test_judge_hits_from_a_predicting_judge():
    class J:
        def predict(self, x):
            return np.asarray(x).reshape(len(x), -1).sum(1).astype(int) % 3

        def score(self, x, y):
            return float((self.predict(x) == y).mean())

    x, y = np.arange(6).reshape(6, 1), np.array([0, 1, 0, 0, 1, 2])
    hits = accuracy.judge_hits(J().score, x, y)  # a bound `score`, as load_judges gives
    assert hits.tolist() == [1, 1, 0, 1, 1, 1] and hits.mean() == J().score(x, y)
    assert accuracy.judge_hits(lambda x, y: 0.5, x, y) is None


def _rec(backend, sps, passed=True, scenario="offline", bs=8, marginal=False):
    sps = list(sps)
    return {"run": "m", "experiment": "m", "backend": backend, "scenario": scenario, "batch_size": bs, "rank": None,
            "samples_per_s": float(np.median(sps)), "rounds_samples_per_s": sps,
            "latency_ms": {"p50": 1000.0 / float(np.median(sps))}, "rounds_p50_ms": [1000.0 / s for s in sps],
            "accuracy_pass": passed, "accuracy_gate": {"marginal": marginal}}


def test_verdicts_compare_the_fastest_accurate_backend_of_each_runtime():
    recs = [_rec("torch-eager", [10, 11, 9]), _rec("torch-compile", [20, 22, 18]),
            _rec("torch-int8", [90, 95, 85], passed=False),            # fastest torch, but inaccurate: not the bar
            _rec("ort-fp32", [15, 16, 14]), _rec("ort-int8", [30, 33, 27], marginal=True),
            _rec("torch-eager", [5, 5, 5], scenario="single-stream", bs=1),
            _rec("ort-int8", [10, 10, 10], scenario="single-stream", bs=1)]
    (off, ss) = sorted(verdicts(recs), key=lambda v: v["scenario"])
    assert off["best_ort"] == "ort-int8" and off["best_torch"] == "torch-compile"
    assert off["ort_vs_torch"] == stats.paired_ratio_ci([30, 33, 27], [20, 22, 18])
    assert off["int8_vs_fp32"]["median"] == pytest.approx(2.0) and off["int8_vs_eager"]["median"] == pytest.approx(3.0)
    assert off["not_accurate"] == ["torch-int8"] and off["marginal"] == ["ort-int8"]
    assert off["text"].startswith("m offline bs8 (samples/s): fastest accurate ORT ort-int8 vs fastest accurate "
                                  "PyTorch torch-compile 1.5x") and "marginal accuracy: ort-int8" in off["text"]
    assert ss["measure"] == "p50 latency" and ss["ort_vs_torch"]["median"] == pytest.approx(2.0)
    assert ss["best_torch"] == "torch-eager" and ss["int8_vs_fp32"] is None
    # OpenVINO is its own runtime: never PyTorch's best, compared with ORT's on a line of its own
    (ov,) = verdicts([_rec("torch-int8", [20, 20, 20]), _rec("ort-int8", [30, 30, 30]), _rec("openvino-int8", [40, 40, 40])])
    assert ov["best_torch"] == "torch-int8" and ov["best_openvino"] == "openvino-int8"
    assert ov["ort_vs_openvino"]["median"] == pytest.approx(0.75) and ov["ort_vs_torch"]["median"] == pytest.approx(1.5)
    assert "ort-int8 vs fastest accurate OpenVINO openvino-int8 0.75x" in ov["text"]
    none = verdicts([_rec("ort-int8", [1, 1, 1], passed=False)])[0]
    assert "no accurate ONNX Runtime and PyTorch backend measured" in none["text"]
