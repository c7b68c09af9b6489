"""The A/B mode and the shuffled interleaving: the order of the lanes is shuffled per round, seeded
and recorded as run; the paired NEW/OLD verdict on hand-built rounds; a real `run_ab` on a tiny
exported UNet whose NEW graph is built to be slower (more compute, the same outputs) exits 1 and
says slower, with accuracy passing on both sides."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from harness.bench import stats
from harness.bench.ab import (CANNOT, FASTER, SAME, SLOWER, RoundSizer, ab_rows, resolvable, rounds_for, run_ab,
                              side_labels, sizing_text, verdict)
from harness.bench.config import BenchConfig
from harness.bench.launchers import interleave
from harness.errors import UserError


# ---------------------------------------------------------------------------- the schedule
def test_interleave_shuffles_per_round_records_what_ran_and_is_seeded():
    calls = []
    names = ["torch-eager", "ort-fp32", "ort-int8", "torch-bf16"]
    items = [("single-stream", 1), ("offline", 8)]
    schedule = interleave(lambda: names, 6, items, lambda n, item, r, s: calls.append((r, item, n)), rng=random.Random(0))
    assert len(schedule) == 6
    for r, orders in enumerate(schedule):
        assert set(orders) == {"single-stream|1", "offline|8"}
        for item in items:
            order = orders[f"{item[0]}|{item[1]}"]
            assert sorted(order) == sorted(names)  # every backend once per round and measurement
            assert order == [n for rr, it, n in calls if rr == r and it == item]  # recorded = what ran
    assert len({tuple(o["offline|8"]) for o in schedule}) > 1  # not the same order every round
    again = interleave(lambda: names, 6, items, lambda *a: None, rng=random.Random(0))
    assert again == schedule  # seeded: the same schedule again
    fixed = interleave(lambda: names, 2, items, lambda *a: None)  # no rng: the given order
    assert all(o == names for r in fixed for o in r.values())


def test_interleave_skips_a_backend_dropped_mid_round():
    live = ["a", "b", "c"]

    def call(n, item, r, s):
        if n == "b":
            live.remove("b")  # what a failed worker call does: names() no longer gives it
    schedule = interleave(lambda: list(live), 3, [("offline", 1)], call, rng=random.Random(1))
    assert "b" in schedule[0]["offline|1"] and all("b" not in o["offline|1"] for o in schedule[1:])


def test_interleave_slices_alternate_abba_and_record_the_order_once():
    calls = []
    schedule = interleave(lambda: ["a", "b", "c"], 2, [("offline", 8)], lambda n, item, r, s: calls.append((r, s, n)),
                          rng=random.Random(3), slices=4)
    for r, orders in enumerate(schedule):
        order = orders["offline|8"]
        assert sorted(order) == ["a", "b", "c"]  # recorded once per round
        for s in range(4):  # every slice runs every lane, odd slices in the reverse order
            assert [n for rr, ss, n in calls if (rr, ss) == (r, s)] == (order if s % 2 == 0 else order[::-1])


def test_interleave_runs_the_rounds_extend_asks_for():
    asked = []

    def extend(done):
        asked.append(done)
        return 5 if done >= 3 else 3
    schedule = interleave(lambda: ["a", "b"], 3, [("offline", 1)], lambda *a: None, extend=extend)
    assert len(schedule) == 5 and asked == [1, 2, 3, 4, 5]  # asked after every round; more than the first plan
    # fewer than planned (a bench fitting its time budget): it stops as soon as the rounds done reach the ask
    assert len(interleave(lambda: ["a"], 12, [("offline", 1)], lambda *a: None, extend=lambda d: 4)) == 4


# ---------------------------------------------------------------------------- sizing the session
def test_rounds_for_and_resolvable_are_inverse():
    # 44 rounds: the interval is [x(16), x(29)] (95.1%), whose upper end estimates the normal quantile
    # 29/45 = 0.644 (0.370 sigma above the centre, standard error 0.192 sigma): 0.08 x (0.370 + 1.2816 x 0.192) < 0.05
    n = rounds_for(0.08, 0.05)
    assert n == 44 and stats.order_k(n)[0] == 16
    assert resolvable(0.08, n) <= 0.05 < resolvable(0.08, n - 1)
    assert rounds_for(0.0, 0.05) == 6 and rounds_for(0.02, 0.05) < rounds_for(0.04, 0.05)


class _Lane:
    def __init__(self, sps):
        self.live = True
        self.rounds = {"offline|8": [{"samples": 8 * 100, "duration_s": 100 * 8 / v, "latencies_s": []} for v in sps]}


def test_round_sizer_reads_the_widest_row_and_caps_at_max_rounds():
    rng = np.random.default_rng(0)
    old = 100 * np.exp(rng.normal(0, 0.01, 12))
    quiet = old * np.exp(rng.normal(0, 0.01, 12))
    noisy = old * np.exp(rng.normal(0, 0.08, 12))
    lanes = {"OLD/ort-fp32": _Lane(old), "NEW/ort-fp32": _Lane(quiet), "OLD/ort-int8": _Lane(old),
             "NEW/ort-int8": _Lane(noisy)}
    sizer = RoundSizer(["OLD", "NEW"], pilot=12, detect=0.05, max_rounds=60)
    want = sizer(lanes, 12)
    assert sizer.widest == "NEW/ort-int8/offline|8" and 0.04 < sizer.sigma < 0.16
    assert want == min(60, max(12, rounds_for(sizer.sigma, 0.05)))
    rec = sizer.record(want)
    assert rec["rounds_run"] == want and rec["resolves"] == pytest.approx(resolvable(sizer.sigma, want))
    capped = RoundSizer(["OLD", "NEW"], pilot=12, detect=0.005, max_rounds=20)
    assert capped(lanes, 12) == 20 and capped.wanted > 20
    assert "too noisy" in sizing_text(capped.record(20)) and "too noisy" not in sizing_text(rec | {"rounds_wanted": 5})


def test_sized_sessions_catch_a_5pct_slowdown_and_stay_quiet_on_a_a():
    """The sizing's promise on simulated rounds (normal per-round log ratios, sigma 6%): at the rounds
    it asks for, a true 5% slowdown is called slower at least 85% of the time (target 90%; 93.7% in
    1,000 simulated sessions) and an
    A/A session says no change at least 95% of the time."""
    rng = np.random.default_rng(1)
    sigma, n = 0.06, rounds_for(0.06, 0.05)
    slower = same = 0
    for _ in range(400):
        for shift, tally in ((np.log(0.95), "slow"), (0.0, "aa")):
            logs = rng.normal(shift, sigma, n)
            r = stats.paired_ratio_ci(np.exp(logs), np.ones(n))
            v = verdict(r, 0.02)
            slower += tally == "slow" and v == SLOWER
            same += tally == "aa" and v == SAME
    assert slower >= 0.85 * 400 and same >= 0.95 * 400


def test_verdict_needs_a_real_and_a_large_enough_difference():
    assert verdict({"median": 0.95, "lo": 0.93, "hi": 0.97}, 0.02) == SLOWER
    assert verdict({"median": 0.95, "lo": 0.90, "hi": 1.01}, 0.02) == SAME   # interval reaches 1: not shown
    assert verdict({"median": 0.99, "lo": 0.985, "hi": 0.995}, 0.02) == SAME  # real but within the tolerance
    assert verdict({"median": 1.05, "lo": 1.03, "hi": 1.07}, 0.02) == FASTER
    assert verdict(None, 0.02) == CANNOT
    assert side_labels(2) == ["OLD", "NEW"] and side_labels(3) == ["OLD", "NEW1", "NEW2"]
    with pytest.raises(UserError):
        side_labels(1)


def _rec(side, backend, rounds, dice=0.80, gate=True):
    return {"run": side, "backend": backend, "scenario": "offline", "batch_size": 8, "rank": None, "task": "segmentation",
            "samples_per_s": float(np.median(rounds)), "rounds_samples_per_s": list(rounds), "dice": dice,
            "accuracy_pass": gate, "accuracy_gate": {"pass": gate, "reasons": [] if gate else ["Dice 62% of fp32"]}}


def test_ab_rows_pair_rounds_and_gate_accuracy():
    """A host that drifts by +-15% between rounds hits both sides alike: a 5% slowdown stands out in
    the paired ratio although the two sides' own intervals overlap."""
    rng = np.random.default_rng(0)
    drift = 100 * np.exp(rng.normal(0, 0.15, 12))
    noise = lambda: np.exp(rng.normal(0, 0.01, 12))  # noqa: E731
    old_eager, old_int8 = drift * noise(), 3 * drift * noise()
    results = [_rec("OLD", "torch-eager", old_eager), _rec("OLD", "ort-int8", old_int8), _rec("OLD", "ort-fp32", drift),
               _rec("NEW", "torch-eager", drift * noise()), _rec("NEW", "ort-int8", 0.95 * 3 * drift * noise(), dice=0.78)]
    rows = {r["backend"]: r for r in ab_rows(results, ["OLD", "NEW"], 12, 0.02, 0.005)}
    assert rows["torch-eager"]["speed"] == SAME and rows["torch-eager"]["accuracy"] == "pass"
    int8 = rows["ort-int8"]
    assert int8["speed"] == SLOWER and int8["ratio"]["hi"] < 1 and abs(int8["ratio"]["median"] - 0.95) < 0.015
    assert int8["ratio"] == stats.paired_ratio_ci(results[4]["rounds_samples_per_s"], old_int8)
    assert int8["accuracy"] == "fail" and "0.8000 -> 0.7800" in int8["notes"][0]
    assert rows["ort-fp32"]["speed"] == CANNOT and "not on NEW" in rows["ort-fp32"]["notes"][0]  # lost: no pass
    short = ab_rows([_rec("OLD", "ort-int8", old_int8), _rec("NEW", "ort-int8", old_int8[:7])], ["OLD", "NEW"], 12, 0.02, 0.005)
    assert short[0]["speed"] == CANNOT and "only 7 of 12 rounds" in short[0]["notes"][0]
    failed = ab_rows([_rec("OLD", "ort-int8", old_int8), _rec("NEW", "ort-int8", old_int8, gate=False)],
                     ["OLD", "NEW"], 12, 0.02, 0.005)
    assert failed[0]["speed"] == SAME and failed[0]["accuracy"] == "fail" and "gate" in failed[0]["notes"][0]


# ---------------------------------------------------------------------------- a real A/B on a slowed graph
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root):
    from harness.config import get_experiment
    from harness.data import build_splits
    from harness.export_stage import export_run
    from tests.helpers import make_run

    root = tmp_path_factory.mktemp("ab-runs")
    cfg = get_experiment("unet-mp-tr-bce").with_base_channels(4).replace(image_size=32)
    centre = torch.stack([build_splits(cfg, data_root)["test"][i][0] for i in range(2)])
    run = make_run(root / "old" / "tiny-unet", cfg, seed=cfg.seed, centre_on=centre)
    export_run(run, data_root=data_root)
    return run


def test_ab_on_a_graph_built_to_be_slower_exits_1(tiny_run, data_root, tmp_path, capsys):
    from harness.bench.slowdown import add_zero_chain
    from harness.cli import main

    new = tmp_path / "new" / "tiny-unet"
    shutil.copytree(tiny_run, new)
    add_zero_chain(tiny_run / "onnx" / "model.onnx", new / "onnx" / "model.onnx", 400)
    cfg = BenchConfig(backends=["ort-fp32"], scenarios=["offline"], batch_sizes=[2], rounds=6, min_duration=0.02,
                      min_queries=4, warmup=1, threads=1, accuracy_samples=4, isolate=False)
    doc, code = run_ab([tiny_run, new], cfg, data_root=data_root, out=tmp_path / "ab.json", argv=["segvae", "ab"],
                       detect=None)
    assert code == 1 and doc["verdict"] == "regression"
    assert doc["config"]["rounds_sizing"] == {"rule": "fixed: 6 rounds"}
    (row,) = doc["ab"]
    assert (row["backend"], row["scenario"], row["batch_size"]) == ("ort-fp32", "offline", 2)
    assert row["speed"] == SLOWER and row["ratio"]["hi"] < 0.9 and row["accuracy"] == "pass"  # same outputs
    assert row["ratio"]["n"] == 6 and row["ratio"]["coverage"] == pytest.approx(1 - 2 / 64)
    old_rec = next(r for r in doc["results"] if r["side"] == "OLD" and r["backend"] == "ort-fp32")
    new_rec = next(r for r in doc["results"] if r["side"] == "NEW" and r["backend"] == "ort-fp32")
    assert new_rec["model_sha256"] != old_rec["model_sha256"] and new_rec["dice"] == old_rec["dice"]
    schedule = doc["config"]["order"]["schedule"]["A/B"]
    assert len(schedule) == 6 and all(sorted(o["offline|2"]) == ["NEW/ort-fp32", "OLD/ort-fp32"] for o in schedule)
    assert len({tuple(o["offline|2"]) for o in schedule}) == 2 and doc["config"]["order"]["seed"] == 0
    out = capsys.readouterr().out
    assert "A/B benchmark, one session: REGRESSION" in out and "current checkout's model code" in out
    assert "96.9% CI" in out and "95%" not in out
    # sized (the default): an A/A session of the same graphs runs the pilot, then what its spread asks for
    same = tmp_path / "same" / "tiny-unet"
    shutil.copytree(tiny_run, same)
    doc, code = run_ab([tiny_run, same], BenchConfig(**{**cfg.__dict__, "rounds": 4, "slices": 3}), data_root=data_root,
                       out=tmp_path / "aa.json", argv=["segvae", "ab"], detect=0.05, max_rounds=8)
    sizing = doc["config"]["rounds_sizing"]
    # three turns per round, each at least a third of the round's batches (min_queries 4 samples = 2 batches of 2)
    assert doc["config"]["slices_used"] == 3
    assert all(r["queries_per_round"] >= 3 for r in doc["results"])
    assert 4 <= doc["config"]["rounds"] == sizing["rounds_run"] == len(doc["config"]["order"]["schedule"]["A/B"]) <= 8
    assert sizing["pilot"] == 4 and sizing["sigma_log_ratio"] is not None and doc["ab"][0]["ratio"]["n"] == sizing["rounds_run"]
    assert "Rounds: " in capsys.readouterr().out
    # bad input exits 2: a server scenario, one run folder only
    assert main(["ab", str(tiny_run), str(new), "--scenarios", "server"]) == 2
    assert main(["ab", str(tiny_run)]) == 2
    assert "at least two run folders" in capsys.readouterr().err
