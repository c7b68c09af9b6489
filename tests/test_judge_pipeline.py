"""The swap pipeline end to end on fixture data: train a tiny CVAE, train a judge, `judge_run`, report."""
from __future__ import annotations

import json

import pytest

from tests.helpers import TINY_CVAE, cli


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory, data_root):
    from harness.judge import judge_run, load_judge, train_judge

    out = tmp_path_factory.mktemp("runs")
    run = out / "cvae-mnist"
    p = cli("train", "cvae-mnist", "--data-root", data_root, "--out", run, *TINY_CVAE)
    last = p.stdout.strip().splitlines()[-1]
    before = json.loads((run / "metrics.json").read_text())
    train_judge("mnist", data_root, out_dir=out / "judges" / "mnist", epochs=1, threads=1, precision="fp32",
                log=lambda s: None)
    judge = load_judge(out / "judges" / "mnist")
    judge_run(run, {"mnist": judge}, data_root)
    return out, run, judge, before, last


def test_training_records_collapse_and_says_it_last(judged_run):
    _, run, _, before, last = judged_run
    c = before["collapse"]
    assert set(c) >= {"kl_nats", "active_units", "latent_dim", "retention", "collapsed"}
    assert c["count"] == before["test"]["count"] and 0 <= c["active_units"] <= c["latent_dim"]
    assert isinstance(c["collapsed"], bool) and c["kl_nats"] >= 0
    # the documented rule (docs/pipeline.md), written out here: collapsed when no active unit or retention below 0.2
    rule_says_collapsed = c["active_units"] == 0 or not c["retention"] >= 0.2  # NaN retention: collapsed
    assert c["collapsed"] is rule_says_collapsed
    words = "collapsed: output ignores the source image" if rule_says_collapsed else "not collapsed"
    assert last.startswith(f"cvae-mnist: {words} (active units {c['active_units']}/{c['latent_dim']}, "
                           f"retention {c['retention']:.3f}"), last


def test_judge_run_scores_every_test_image_beside_fitness_and_collapse(judged_run):
    _, run, judge, before, _ = judged_run
    assert json.loads((run / "metrics.json").read_text()) == before  # training's file is left as it was
    m = json.loads((run / "labelswap.json").read_text())  # the judge stage's own file
    j = m["judge"]
    assert j["test_swap_count"] == before["test"]["count"]
    for key in ("grid_swap_acc", "test_swap_acc"):
        assert 0.0 <= j[key] <= 1.0
        # shares of 25 / N images: multiples of 1/count
        n = 25 if key == "grid_swap_acc" else j["test_swap_count"]
        assert abs(j[key] * n - round(j[key] * n)) < 1e-9
    assert j["judge_fit"] is judge.meta["fit"] and j["judge_fit_reasons"] == judge.meta["fit_reasons"]
    assert j["test_acc_real"] == judge.meta["accuracy"]["real"]
    assert "collapse" not in m  # measured once, at training; not measured again
    assert 0.0 <= m["recon"]["judge_acc_true_label"] <= 1.0


def _report_tables(out):
    from harness.report import build_blocks, collect

    return [b.content for b in build_blocks(collect(out), []) if b.kind == "table"]


def test_report_shows_fitness_and_retention_beside_swap_scores(judged_run):
    out, run, judge, before, _ = judged_run
    tables = _report_tables(out)
    fitness = next(t for t in tables if "blur σ 1 px" in t.columns)
    row = dict(zip(fitness.columns, fitness.rows[0]))
    assert row["dataset"] == "mnist" and row["class-mean images"].endswith("/10")
    assert judge.meta["fit"] is False and judge.meta["fit_reasons"]  # a 1-epoch judge on the tiny fixture
    assert row["fit"].startswith("NO: ") and all(reason in row["fit"] for reason in judge.meta["fit_reasons"])
    swap = next(t for t in tables if "label-swap success" in t.columns)
    assert swap.rows and all(r[swap.columns.index("retention")] == f"{before['collapse']['retention']:.3f}"
                             for r in swap.rows)
    assert all("(UNFIT judge)" in r[swap.columns.index("label-swap success")] for r in swap.rows)


@pytest.mark.parametrize("collapsed, shown", [(True, "collapsed: output ignores the source image"), (False, "no")])
def test_report_says_collapsed_exactly_when_the_run_collapsed(judged_run, tmp_path, collapsed, shown):
    """Both verdicts, each on a copy of the run whose metrics.json says so."""
    import shutil

    out, run, _, before, _ = judged_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    metrics = json.loads((copy / run.name / "metrics.json").read_text())
    metrics["collapse"].update(collapsed=collapsed, retention=0.05 if collapsed else 0.6)
    (copy / run.name / "metrics.json").write_text(json.dumps(metrics))
    cvae = next(t for t in _report_tables(copy) if "active units" in t.columns)
    assert cvae.rows[0][cvae.columns.index("collapsed")] == shown


def test_a_run_trained_before_collapse_metrics_gets_them_when_judged(judged_run, data_root):
    """Runs reused from before #16 have no `collapse` in metrics.json: judging measures it, the same way."""
    from harness.judge import judge_run

    _, run, judge, before, _ = judged_run
    m = json.loads((run / "metrics.json").read_text())
    del m["collapse"]
    (run / "metrics.json").write_text(json.dumps(m))
    judge_run(run, {"mnist": judge}, data_root)
    again = json.loads((run / "labelswap.json").read_text())["collapse"]
    assert again["active_units"] == before["collapse"]["active_units"]
    assert again["retention"] == pytest.approx(before["collapse"]["retention"], rel=1e-5)
    assert again["kl_nats"] == pytest.approx(before["collapse"]["kl_nats"], rel=1e-5, abs=1e-6)
