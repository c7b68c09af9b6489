"""`segvae compare`: verdicts from intervals (v2) or the threshold alone (v1), exit codes 0 / 1 / 2;
every hole a run could slip through (a backend missing, an unstable row, a failed accuracy gate, a
CVAE without a judge, another machine) exits non-zero; intervals named by their true coverage."""
from __future__ import annotations

import copy
import json

import pytest

from harness.cli import main
from harness.compare import CANNOT, FASTER, SAME, SLOWER, compare, parse_fraction
from tests.fixtures import bench_v1, bench_v2

def _scaled(doc: dict, backend: str, factor: float) -> dict:
    """One backend's throughput (and interval) times factor; its latency (and interval) divided by it."""
    doc = copy.deepcopy(doc)
    for r in doc["results"]:
        if r["backend"] == backend:
            r["samples_per_s"] *= factor
            if "samples_per_s_ci" in r:
                r["samples_per_s_ci"] = [x * factor for x in r["samples_per_s_ci"]]
            r["latency_ms"] = {k: v / factor for k, v in r["latency_ms"].items()}
            if "latency_ms_ci" in r:
                r["latency_ms_ci"] = {k: [x / factor for x in v] for k, v in r["latency_ms_ci"].items()}
    return doc


def _write(tmp_path, name: str, doc: dict):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize("make", [bench_v2, bench_v1])
def test_against_itself_no_change(tmp_path, capsys, make):
    p = _write(tmp_path, "bench.json", make())
    assert main(["compare", str(p), str(p), "--out", str(tmp_path / "c.md")]) == 0
    md = capsys.readouterr().out
    assert md == (tmp_path / "c.md").read_text()
    c = compare(make(), make())
    assert len(c.speed) == 3 * 4 + 2 and {r["verdict"] for r in c.speed} == {SAME}  # rank 0 record left out
    assert {r["verdict"] for r in c.accuracy} == {"pass"} and len(c.accuracy) == 5
    assert "no regression" in md and md.count(SAME) == len(c.speed)
    if make is bench_v1:  # no intervals: says the threshold alone decided
        assert not c.intervals and "threshold only" in md and "schema v1" in md
    else:
        assert c.intervals and "threshold only" not in md


@pytest.mark.parametrize("make", [bench_v2, bench_v1])
def test_thirty_percent_slower_backend_is_named(tmp_path, capsys, make):
    old = _write(tmp_path, "old.json", make())
    new = _write(tmp_path, "new.json", _scaled(make(), "ort-int8", 0.7))
    assert main(["compare", str(old), str(new)]) == 1
    md = capsys.readouterr().out
    c = compare(make(), _scaled(make(), "ort-int8", 0.7))
    slower = {r["key"] for r in c.slower}
    assert slower == {("unet-mp-tr-bce", "ort-int8", s, b) for s, b in
                      (("single-stream", 1), ("offline", 1), ("offline", 8), ("server", 1))}
    assert all(r["verdict"] == SAME for r in c.speed if r["key"][1] != "ort-int8")
    row = next(r for r in c.speed if r["key"] == ("unet-mp-tr-bce", "ort-int8", "offline", 8))
    assert row["change"] == pytest.approx(-0.30) and row["new"] == pytest.approx(112.0)
    assert "REGRESSION" in md and "| unet-mp-tr-bce | ort-int8 | offline | 8 | samples/s |" in md
    assert "-30.0%" in md and "**slower**" in md
    # the reverse direction: faster, no regression
    assert {r["verdict"] for r in compare(_scaled(make(), "ort-int8", 0.7), make()).speed
            if r["key"][1] == "ort-int8"} == {FASTER}


def test_reference_slower_on_the_same_weights_is_noted(tmp_path, capsys):
    """Every backend 15% slower (a busier host): still a regression, but every row of a configuration
    where torch eager itself moved on identical weights says so; new weights say nothing."""
    def with_sha(doc):
        for r in doc["results"]:
            r["model_sha256"] = f"sha-{r['backend']}"
        return doc

    old, new = with_sha(bench_v2()), with_sha(bench_v2())
    for b in ("torch-eager", "ort-fp32", "ort-int8"):
        new = _scaled(new, b, 0.85)
    c = compare(old, new)
    assert c.regression and set(c.reference_moved) == {("cvae-mnist", "single-stream", 1)} | {
        ("unet-mp-tr-bce", s, b) for s, b in (("single-stream", 1), ("offline", 1), ("offline", 8), ("server", 1))}
    row = next(r for r in c.speed if r["key"] == ("unet-mp-tr-bce", "ort-int8", "offline", 8))
    assert row["verdict"] == SLOWER and row["note"] == ("torch-eager was slower (samples/s -15.0%) on the same weights: "
                                                        "the machine, its load or the bench changed")
    server = next(r for r in c.speed if r["key"] == ("unet-mp-tr-bce", "ort-fp32", "server", 1))
    assert "torch-eager was slower (p99 ms +17.6%)" in server["note"]
    p_old, p_new = _write(tmp_path, "old.json", old), _write(tmp_path, "new.json", new)
    assert main(["compare", str(p_old), str(p_new)]) == 1
    assert "**torch-eager moved on unchanged weights** in 5 configuration(s)" in capsys.readouterr().out
    assert compare(old, _scaled(old, "ort-int8", 0.7)).reference_moved == {}  # only int8 slower: its own verdict
    for r in new["results"]:  # retrained weights: eager's change is the model's, nothing to note
        r["model_sha256"] = "retrained"
    assert compare(old, new).reference_moved == {}


def test_overlapping_intervals_are_no_significant_change():
    new = _scaled(bench_v2(), "ort-fp32", 0.93)  # 7% lower, but with intervals 30% wide they overlap
    for r in new["results"]:
        if r["backend"] == "ort-fp32":
            v = r["samples_per_s"]
            r["samples_per_s_ci"] = [v * 0.85, v * 1.15]
    c = compare(bench_v2(), new)
    rows = [r for r in c.speed if r["key"][1] == "ort-fp32" and r["metric"] == "samples_per_s"]
    assert rows and all(r["verdict"] == SAME and r["note"] == "intervals overlap" for r in rows)
    # the v1 fallback would call the same 7% drop slower: the threshold alone decides there
    assert SLOWER in {r["verdict"] for r in compare(bench_v1(), _scaled(bench_v1(), "ort-fp32", 0.93)).speed}


@pytest.mark.parametrize("make", [bench_v2, bench_v1])
def test_int8_dice_drop_fails_accuracy(tmp_path, capsys, make):
    new = make()
    for r in new["results"]:
        if r["backend"] == "ort-int8":
            r["dice"] = round(r["dice"] - 0.02, 6)
    old_p, new_p = _write(tmp_path, "old.json", make()), _write(tmp_path, "new.json", new)
    assert main(["compare", str(old_p), str(new_p)]) == 1
    md = capsys.readouterr().out
    c = compare(make(), new)
    assert [r["key"] for r in c.accuracy_failures] == [("unet-mp-tr-bce", "ort-int8")]
    assert c.accuracy_failures[0]["drop"] == pytest.approx(0.02) and not c.slower
    assert "| unet-mp-tr-bce | ort-int8 | Dice | 0.7984 | 0.7784 | -0.0200 | 238 / 238 | **fail** |" in md
    # a looser gate lets it pass
    assert main(["compare", str(old_p), str(new_p), "--max-accuracy-drop", "0.03"]) == 0


def test_unreadable_input_exits_2(tmp_path, capsys):
    good = _write(tmp_path, "good.json", bench_v2())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["compare", str(good), str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing.json"), str(good)]) == 2
    assert "missing.json" in capsys.readouterr().err
    notbench = _write(tmp_path, "x.json", {"hello": 1})
    assert main(["compare", str(notbench), str(good)]) == 2
    err = capsys.readouterr().err
    assert "x.json" in err and "'results' list" in err
    unrelated = copy.deepcopy(bench_v2())
    for r in unrelated["results"]:
        r["experiment"] = "other-" + r["experiment"]
    assert main(["compare", str(good), str(_write(tmp_path, "u.json", unrelated))]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_max_slowdown_parsing():
    assert parse_fraction("5%") == pytest.approx(0.05) and parse_fraction("0.05") == pytest.approx(0.05)
    for bad in ("5", "abc", "-1%", "150%"):
        with pytest.raises(ValueError):
            parse_fraction(bad)
    with pytest.raises(SystemExit) as e:
        main(["compare", "a.json", "b.json", "--max-slowdown", "5"])
    assert e.value.code == 2


# ---------------------------------------------------------------------------- the holes, each non-zero
def _edited(doc: dict, edit, **match) -> dict:
    doc = copy.deepcopy(doc)
    for r in doc["results"]:
        if all(r.get(k) == v for k, v in match.items()):
            edit(r)
    return doc


def _exit(tmp_path, old: dict, new: dict, *flags) -> int:
    return main(["compare", str(_write(tmp_path, "old.json", old)), str(_write(tmp_path, "new.json", new)), *flags])


def test_backend_missing_in_new_is_a_failure(tmp_path, capsys):
    new = bench_v2()
    new["results"] = [r for r in new["results"] if r["backend"] != "ort-int8"]
    assert _exit(tmp_path, bench_v2(), new) == 1
    out = capsys.readouterr().out
    assert "CANNOT VERIFY" in out and "ort-int8 / offline / 8: in OLD, missing from NEW" in out
    assert _exit(tmp_path, bench_v2(), new, "--allow-missing") == 0


@pytest.mark.parametrize("fields", [{"stable": False, "unstable_reasons": ["only 2 of 5 rounds completed"]},
                                    {"valid": False, "invalid_reasons": ["only 2 of 5 rounds completed"]}])
def test_unstable_row_in_new_cannot_be_verified(tmp_path, capsys, fields):
    """A backend that died halfway: its row is not stable; the old field names (valid) read the same."""
    def die(r):
        r.pop("stable"), r.pop("unstable_reasons")
        r.update(fields)
    new = _edited(bench_v2(), die, backend="ort-fp32", scenario="offline", batch_size=8)
    c = compare(bench_v2(), new)
    (row,) = [r for r in c.speed if r["verdict"] == CANNOT]
    assert row["key"] == ("unet-mp-tr-bce", "ort-fp32", "offline", 8) and "only 2 of 5 rounds" in row["note"]
    assert c.regression and _exit(tmp_path, bench_v2(), new) == 1
    assert "**cannot verify**" in capsys.readouterr().out
    assert _exit(tmp_path, bench_v2(), new, "--allow-unstable") == 0


def test_new_failing_its_own_accuracy_gate_fails(tmp_path, capsys):
    """The same Dice on both sides (no drop) but NEW's gate against its fp32 reference says FAIL."""
    def fail(r):
        r["accuracy_pass"] = False
        r["accuracy_gate"] = {"pass": False, "reasons": ["metric 0.7900 is 98.60% of the fp32 reference (needs >= 99.0%)"]}
    old, new = _edited(bench_v2(), fail, backend="ort-int8"), _edited(bench_v2(), fail, backend="ort-int8")
    c = compare(old, new)
    assert [r["key"] for r in c.accuracy_failures] == [("unet-mp-tr-bce", "ort-int8")]
    assert c.accuracy_failures[0]["drop"] == 0 and "98.60%" in c.accuracy_failures[0]["note"]
    assert _exit(tmp_path, old, new) == 1 and "REGRESSION" in capsys.readouterr().out
    assert _exit(tmp_path, old, new, "--allow-gate-fail") == 0


def test_cvae_without_a_judge_cannot_be_verified(tmp_path, capsys):
    def unjudged(r):
        r["judge_acc"] = None
        r["accuracy_gate"] = {"pass": True, "metric": "MAE vs fp32 only (no judge given)"}
    new = _edited(bench_v2(), unjudged, task="cvae")
    c = compare(bench_v2(), new)
    assert {r["key"] for r in c.accuracy if r["verdict"] == CANNOT} == {("cvae-mnist", "torch-eager"),
                                                                        ("cvae-mnist", "ort-fp32")}
    assert _exit(tmp_path, bench_v2(), new) == 1
    assert "benched without a judge" in capsys.readouterr().out
    assert _exit(tmp_path, bench_v2(), new, "--allow-no-judge") == 0


def test_server_rows_too_short_for_a_p99_are_left_out_with_the_reason(tmp_path, capsys):
    short = lambda r: r.update(percentile_ok={"p50": True, "p90": True, "p99": False}, queries_per_round=64)  # noqa: E731
    old, new = _edited(bench_v2(), short, scenario="server"), _edited(bench_v2(), short, scenario="server")
    new = _scaled(new, "ort-int8", 0.5)  # a server p99 twice as high, not gated: too few queries for a p99
    c = compare(old, new)
    assert {k[2] for k, _ in c.left_out} == {"server"} and len(c.left_out) == 3
    assert all(r["key"][2] != "server" for r in c.speed)
    assert _exit(tmp_path, old, _edited(bench_v2(), short, scenario="server")) == 0
    out = capsys.readouterr().out
    assert "Left out of the speed gate" in out and "(OLD 64, NEW 64 < 662" in out and "--min-queries 662" in out


@pytest.mark.parametrize("section,key,value", [("env", "cpu_model", "Other CPU"), ("env", "cpu_flags", ["avx2", "avx512f"]),
                                               ("env", "torch", "2.6"), ("config", "threads", 1), ("config", "rounds", 12)])
def test_machine_or_setting_mismatch_exits_2_naming_the_field(tmp_path, capsys, section, key, value):
    new = bench_v2()
    new[section][key] = value
    assert _exit(tmp_path, bench_v2(), new) == 2
    err = capsys.readouterr().err
    assert f"{section}.{key}" in err and "--allow-different-machine" in err
    assert _exit(tmp_path, bench_v2(), new, "--allow-different-machine") == 0
    assert f"{section}.{key}: " in capsys.readouterr().out


def test_cross_session_verdicts_say_drift_is_uncontrolled_and_label_true_coverage(tmp_path, capsys):
    three = _edited(bench_v2(), lambda r: r.update(ci_coverage=0.75, rounds=3))
    p = _write(tmp_path, "three.json", three)
    assert main(["compare", str(p), str(p)]) == 0
    out = capsys.readouterr().out
    assert "Host drift is not controlled" in out and "segvae ab" in out
    assert "75% CI / 75% CI" in out and "95%" not in out
