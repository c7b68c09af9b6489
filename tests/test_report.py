"""harness.report: tables match the JSON they came from, the HTML is self-contained, paths stay inside."""
from __future__ import annotations

import base64
import json
import re
import statistics
from pathlib import Path

import pytest

from harness.report import build_report
from tests.fixtures import UNET_METRICS, md_tables, write_json, write_png, write_results, write_unet_run


def table_with(tables, column: str) -> dict:
    return next(t for t in tables if column in t["columns"])


def _stat(xs, d=4) -> str:
    return f"{statistics.fmean(xs):.{d}f} ± {statistics.stdev(xs):.{d}f}"


def test_report_tables_match_json(tmp_path):
    runs = tmp_path / "runs"
    fx = write_results(runs)
    paths = build_report(runs)
    assert set(paths) >= {"html", "md"}
    md = Path(paths["md"]).read_text()
    tables = md_tables(md)

    unet = table_with(tables, "test Dice")
    rows = {r[0]: dict(zip(unet["columns"], r)) for r in unet["rows"]}
    assert set(rows) == set(UNET_METRICS)
    for name, seeds in UNET_METRICS.items():
        vals = list(seeds.values())
        row = rows[name]
        assert row["test Dice"] == _stat([v[0] for v in vals])
        assert row["test IoU"] == _stat([v[1] for v in vals])
        assert row["test Dice (per-image mean)"] == _stat([v[2] for v in vals])
        assert row["val Dice"] == _stat([v[3] for v in vals])
        assert row["train time (s)"] == _stat([v[4] for v in vals], 1)
        assert row["seeds (n)"] == "0, 1 (2)"
    # hand check of one cell: mean 0.82, sample std sqrt(((0.02)^2 * 2) / 1) = 0.028284
    assert rows["unet-mp-tr-bce"]["test Dice"] == "0.8200 ± 0.0283"

    cvae = table_with(tables, "test ELBO (nats)")
    row = dict(zip(cvae["columns"], cvae["rows"][0]))
    assert row["experiment"] == "cvae-mnist"
    assert row["test ELBO (nats)"] == "650.50" and row["test NLL"] == "-700.25" and row["test KL"] == "49.75"
    assert row["bits/dim"] == "6.789" and row["recon MAE"] == "0.0567"
    assert row["judge acc, true-label recon"] == "—"

    judges = table_with(tables, "judge test acc (real images)")
    assert judges["rows"][0][:2] == ["mnist", "98.1%"]
    swap = table_with(tables, "label-swap success")
    got = {(r[3], r[4]): (r[5], r[6]) for r in swap["rows"]}
    assert got == {("torch-eager", "fp32"): ("76.0%", "200"), ("ort-fp32", "fp32"): ("72.0%", "200"),
                   ("test split, PyTorch", "fp32"): ("94.2%", "8000"),  # 94.25 -> 1 decimal
                   ("5x5 grid, PyTorch", "fp32"): ("88.0%", "25")}
    assert all(r[2] == "98.1%" for r in swap["rows"])

    labels = table_with(tables, "col 1")
    assert labels["rows"][0][0] == "0 → 3" and labels["rows"][4][4] == "4 → 7"

    bench = table_with(tables, "samples/s @bs8")
    brows = {r[0]: dict(zip(bench["columns"], r)) for r in bench["rows"]}
    assert brows["torch-eager"]["p50 ms"] == "10.00" and brows["ort-fp32"]["p99 ms"] == "10.00"
    assert brows["ort-fp32"]["samples/s @bs1"] == "125.0" and brows["ort-fp32"]["samples/s @bs8"] == "250.0"
    assert brows["ort-fp32"]["speed-up p50"] == "2.00×" and brows["torch-eager"]["speed-up p50"] == "1.00×"
    assert brows["ort-fp32"]["speed-up best throughput"] == "2.50×"
    assert brows["torch-eager"]["best % of peak"] == "12.5%"
    cb = [t for t in tables if "judge (swap)" in t["columns"]][0]
    assert {r[0]: r[cb["columns"].index("judge (swap)")] for r in cb["rows"]} == {"torch-eager": "76.0%",
                                                                                "ort-fp32": "72.0%"}
    skipped = table_with(tables, "reason")
    assert skipped["rows"] == [["ort-cuda", "no CUDA &lt;GPU&gt;"]]
    assert "segvae train unet-mp-tr-bce" in md
    assert "Reused finished runs (same config, trained before this invocation; their commands are " \
           "listed below): cvae-mnist, judges/mnist" in md

    # the markdown's images exist in report_assets/
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert refs and all((runs / r).is_file() for r in refs)
    assert all(r.startswith("report_assets/") for r in refs)


def test_html_self_contained_and_escaped(tmp_path):
    runs = tmp_path / "runs"
    fx = write_results(runs)
    html = Path(build_report(runs, out_dir=tmp_path / "out")["html"]).read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    for tag in ("<html", "</html>", "<body>", "</body>", "<head>", "</head>"):
        assert tag in html
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    assert links and all(u.startswith("data:") for u in links), links
    assert "<link" not in html.lower() and "@import" not in html and "url(" not in html
    assert base64.b64encode(fx["grid"]).decode() in html          # the CVAE grid, embedded
    assert "<script>" not in html and "&lt;script&gt;" in html    # file strings are escaped
    # tables: the same numbers as the markdown
    assert "0.8200 ± 0.0283" in html and "650.50" in html
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "report_assets").is_dir()
    assert not (runs / "report.html").exists()


def test_path_outside_runs_dir_is_refused(tmp_path):
    runs = tmp_path / "runs"
    write_results(runs)
    secret = tmp_path / "secret.png"
    data = write_png(secret, (9, 9, 9))
    metrics = json.loads((runs / "unet-mp-tr-bce-s0" / "metrics.json").read_text())
    metrics["samples"]["overlays"] = "../../secret.png"
    (runs / "unet-mp-tr-bce-s0" / "metrics.json").write_text(json.dumps(metrics))
    (runs / "unet-mp-tr-bce-s1" / "samples" / "overlays.png").unlink()
    (runs / "unet-mp-tr-bce-s1" / "samples" / "overlays.png").symlink_to(secret)  # a symlink out is refused too
    paths = build_report(runs)
    html = Path(paths["html"]).read_text()
    md = Path(paths["md"]).read_text()
    assert base64.b64encode(data).decode() not in html
    assert "/etc/passwd" not in "".join(p.name for p in (runs / "report_assets").iterdir())
    assert "refusing path" in md and "outside" in md
    for f in (runs / "report_assets").iterdir():
        assert f.read_bytes() != data


def test_report_without_bench_or_judges(tmp_path):
    runs = tmp_path / "runs"
    write_results(runs, bench=False)
    (runs / "judges" / "mnist" / "judge.json").unlink()
    m = json.loads((runs / "cvae-mnist" / "metrics.json").read_text())
    del m["judge"]  # no judge ran: no scores in the run either
    write_json(runs / "cvae-mnist" / "metrics.json", m)
    md = Path(build_report(runs)["md"]).read_text()
    assert "Benchmark: not run" in md
    assert "Judges: not run" in md and "Label-swap scores: not run" in md
    assert "test Dice" in md  # the rest still renders


def test_report_empty_runs_dir(tmp_path):
    from harness.errors import UserError

    from harness.cli import main

    with pytest.raises(UserError, match=f"no results in {tmp_path}"):  # an empty report would hide the mistake
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    write_unet_run(tmp_path, "a-run", 0, UNET_METRICS["unet-mp-tr-bce"][0])
    with pytest.raises(UserError, match="is itself a run folder"):
        build_report(tmp_path / "a-run-s0")
    assert not (tmp_path / "report.html").exists()


def test_missing_runs_dir_is_user_error(tmp_path):
    from harness.errors import UserError

    with pytest.raises(UserError, match="not found"):
        build_report(tmp_path / "nope")


def test_the_report_says_which_cpu_gated_int8_and_which_benched(tmp_path):
    """An int8 graph exported on a VNNI Xeon and benched on an AVX2 EPYC: the bench section names both
    CPUs and says the bench's own gate is the one that holds; the same CPU gets no such warning."""
    from harness.report.model import Results
    from harness.report.sections import _machines_note

    isa = {"cpu_model": "Xeon", "cpu_flags": ["avx2", "avx512_vnni"], "reduce_range": False, "why": "VNNI"}
    res = Results(runs_dir=tmp_path, bench={"env": {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "fma"]}},
                  runs=[{"name": "unet", "export": {"int8": {"isa": isa}}}, {"name": "no-int8", "export": None}])
    (text,) = [b.content for b in _machines_note(res)]
    assert text.startswith("This bench ran on AMD EPYC (avx2, fma).")
    assert "unet: int8 exported and gated on Xeon (avx2, avx512_vnni), reduce_range off (VNNI); NOT the bench's CPU" in text
    assert "no-int8" not in text
    res.bench["env"] = {"cpu_model": "Xeon", "cpu_flags": ["avx2", "avx512_vnni"]}
    assert "NOT the bench's CPU" not in _machines_note(res)[0].content
