"""`segvae compare`: verdicts from intervals (v2) or the threshold alone (v1), exit codes 0 / 1 / 2."""
from __future__ import annotations

import copy
import json

import pytest

from harness.cli import main
from harness.compare import FASTER, SAME, SLOWER, compare, parse_fraction
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
