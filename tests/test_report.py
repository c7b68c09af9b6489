"""harness.report: tables match the JSON they came from, the HTML is self-contained, paths stay inside."""
from __future__ import annotations

import base64
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.report import build_report

UNET = {  # experiment -> seed -> (test dice, test iou, test dice_mean, val dice, train_seconds, s/epoch)
    "unet-mp-tr-bce": {0: (0.80, 0.70, 0.78, 0.81, 100.0, 10.0), 1: (0.84, 0.72, 0.80, 0.83, 110.0, 11.0)},
    "unet-sc-up-dice": {0: (0.75, 0.60, 0.74, 0.76, 90.0, 9.0), 1: (0.79, 0.66, 0.77, 0.80, 96.0, 9.6)},
}
CVAE_TEST = {"elbo": 650.5, "nll": -700.25, "kl": 49.75, "bpd": 6.789, "count": 100}
LABELS = [[i % 10, (i + 3) % 10] for i in range(25)]


def _png(path: Path, colour=(200, 30, 30), size=(10, 10)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path)
    return path.read_bytes()


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _unet_run(runs: Path, name: str, seed: int, vals) -> None:
    dice, iou, dice_mean, val_dice, secs, spe = vals
    d = runs / f"{name}-s{seed}"
    down, up = ("maxpool", "transpose") if "mp" in name else ("strided", "upsample")
    _write(d / "config.json", {"name": name, "task": "segmentation", "dataset": "pets", "loss": name.rsplit("-", 1)[1],
                               "model": {"down": down, "up": up, "base_channels": 8}, "epochs": 2, "seed": seed})
    _png(d / "samples" / "overlays.png", (10 * seed, 100, 50))
    _write(d / "metrics.json", {
        "experiment": name, "task": "segmentation", "seed": seed, "num_processes": 1, "mixed_precision": "no",
        "epochs_run": 2, "best_epoch": 2, "train_seconds": secs, "seconds_per_epoch": spe, "train_samples_per_s": 5.0,
        "val": {"dice": val_dice, "iou": 0.5, "dice_mean": 0.5, "iou_mean": 0.5, "count": 4, "loss": 0.3},
        "test": {"dice": dice, "iou": iou, "dice_mean": dice_mean, "iou_mean": 0.6, "count": 6, "loss": 0.3},
        "history": [{"epoch": 1, "train_loss": 0.6, "val": {"dice": val_dice - 0.1}, "seconds": spe},
                    {"epoch": 2, "train_loss": 0.4, "val": {"dice": val_dice}, "seconds": spe}],
        "samples": {"overlays": "samples/overlays.png"}})


def _results(runs: Path, bench: bool = True) -> dict:
    for name, seeds in UNET.items():
        for seed, vals in seeds.items():
            _unet_run(runs, name, seed, vals)
    c = runs / "cvae-mnist"
    _write(c / "config.json", {"name": "cvae-mnist", "task": "cvae", "dataset": "mnist", "loss": "elbo",
                               "model": {"latent_dim": 16}, "seed": 0})
    grid = _png(c / "samples" / "label_swap_grid.png", (1, 2, 3), (20, 20))
    _png(c / "samples" / "label_swap_sources.png", (4, 5, 6), (20, 20))
    _write(c / "metrics.json", {
        "experiment": "cvae-mnist", "task": "cvae", "seed": 0, "epochs_run": 3, "best_epoch": 3, "train_seconds": 30.0,
        "seconds_per_epoch": 10.0, "val": {**CVAE_TEST}, "test": CVAE_TEST,
        "history": [{"epoch": 1, "train_loss": -100.0, "val": {"elbo": 600.0}}],
        # the figure path tries to escape runs_dir: it must be refused, and the grid + sources used instead
        "samples": {"grid": "samples/label_swap_grid.png", "figure": "../../etc/passwd",
                    "sources": "samples/label_swap_sources.png", "labels": LABELS},
        "recon": {"mae": 0.0567, "judge_acc_true_label": None},
        "judge": {"test_acc_real": 0.9812, "grid_swap_acc": 0.88, "test_swap_acc": 0.9425, "test_swap_count": 8000}})
    _write(runs / "judges" / "mnist" / "judge.json", {"dataset": "mnist", "arch": {}, "val_acc": 0.985,
                                                       "test_acc": 0.9812, "epochs": 6, "seconds": 40.0})
    records = []
    if bench:
        base = {"run": "unet-mp-tr-bce-s0", "experiment": "unet-mp-tr-bce", "task": "segmentation", "rank": None}
        for backend, prec, p50, thr, dice in (("torch-eager", "fp32", 10.0, 100.0, 0.80),
                                              ("ort-fp32", "fp32", 5.0, 250.0, 0.80)):
            records.append({**base, "backend": backend, "precision": prec, "scenario": "single-stream",
                            "batch_size": 1, "samples_per_s": 1000 / p50,
                            "latency_ms": {"p50": p50, "p90": p50 * 1.5, "p99": p50 * 2, "max": p50 * 3},
                            "pct_of_peak": 12.5, "dice": dice, "dice_delta": 0.0})
            for bs, k in ((1, 0.5), (8, 1.0)):
                records.append({**base, "backend": backend, "precision": prec, "scenario": "offline",
                                "batch_size": bs, "samples_per_s": thr * k, "latency_ms": None, "pct_of_peak": None})
        cbase = {"run": "cvae-mnist", "experiment": "cvae-mnist", "task": "cvae", "rank": None, "batch_size": 1,
                 "scenario": "single-stream", "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5}}
        records += [{**cbase, "backend": "torch-eager", "precision": "fp32", "judge_acc": 0.76, "max_abs_err": 0.0,
                     "accuracy_count": 200},
                    {**cbase, "backend": "ort-fp32", "precision": "fp32", "judge_acc": 0.72, "max_abs_err": 3e-7,
                     "accuracy_count": 200}]
        _write(runs / "bench.json", {
            "version": 1, "env": {"cpu": "Test CPU <script>alert(1)</script>", "cores": 2, "torch": "2.x",
                                  "command": "segvae bench runs/x"},
            "peak": {"fp32_gflops": 200.0}, "skipped": {"ort-cuda": "no CUDA <GPU>"}, "results": records})
    _write(runs / "pipeline.json", {"preset": "quick", "commands": ["segvae train unet-mp-tr-bce"],
                                    "wall_seconds": 12.5, "data_root": "/data", "reused_runs": ["cvae-mnist", "judges/mnist"]})
    return {"grid": grid}


def md_tables(md: str) -> list[dict]:
    """Every markdown table as {"columns": [...], "rows": [[...]]}."""
    tables, cur = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cur is None:
                cur = {"columns": cells, "rows": []}
            elif not all(set(c) <= {"-"} for c in cells):
                cur["rows"].append(cells)
        elif cur is not None:
            tables.append(cur)
            cur = None
    if cur is not None:
        tables.append(cur)
    return tables


def table_with(tables, column: str) -> dict:
    return next(t for t in tables if column in t["columns"])


def _stat(xs, d=4) -> str:
    return f"{statistics.fmean(xs):.{d}f} ± {statistics.stdev(xs):.{d}f}"


def test_report_tables_match_json(tmp_path):
    runs = tmp_path / "runs"
    fx = _results(runs)
    paths = build_report(runs)
    assert set(paths) >= {"html", "md"}
    md = Path(paths["md"]).read_text()
    tables = md_tables(md)

    unet = table_with(tables, "test Dice")
    rows = {r[0]: dict(zip(unet["columns"], r)) for r in unet["rows"]}
    assert set(rows) == set(UNET)
    for name, seeds in UNET.items():
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
    fx = _results(runs)
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
    _results(runs)
    secret = tmp_path / "secret.png"
    data = _png(secret, (9, 9, 9))
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
    _results(runs, bench=False)
    (runs / "judges" / "mnist" / "judge.json").unlink()
    m = json.loads((runs / "cvae-mnist" / "metrics.json").read_text())
    del m["judge"]  # no judge ran: no scores in the run either
    _write(runs / "cvae-mnist" / "metrics.json", m)
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
    _unet_run(tmp_path, "a-run", 0, UNET["unet-mp-tr-bce"][0])
    with pytest.raises(UserError, match="is itself a run folder"):
        build_report(tmp_path / "a-run-s0")
    assert not (tmp_path / "report.html").exists()


def test_missing_runs_dir_is_user_error(tmp_path):
    from harness.errors import UserError

    with pytest.raises(UserError, match="not found"):
        build_report(tmp_path / "nope")
