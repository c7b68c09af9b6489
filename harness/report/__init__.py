"""`segvae report`: rebuild report.html and report.md from saved results (JSON + PNG), no training.

Flow: collect() reads every input once -> section builders turn it into a list of blocks
(headings, paragraphs, tables, images, code) -> render_html() / render_md() write the SAME
blocks, so the two reports cannot disagree. Tables are lists of already formatted rows.

Inputs (under runs_dir; JSON only, never unpickled):
  <run>/config.json + <run>/metrics.json   one per trained run (seeds of one experiment share config name)
  <run>/labelswap.json                     the judge stage's label-swap scores (read beside metrics.json)
  judges/<dataset>/judge.json              label-swap judges
  bench.json                               PyTorch vs ONNX Runtime records
  pipeline.json                            how the whole thing was produced (optional)
Image paths read from metrics.json must stay inside runs_dir and be PNG files; others are refused.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.io import atomic_write_bytes, atomic_write_text
from harness.run_folder import REPORT_HTML, REPORT_MD
from harness.report.bench_tables import bench_table, server_table
from harness.report.collect import collect
from harness.report.model import ASSETS_DIR, Figure
from harness.report.render import render_html, render_md
from harness.report.sections import build_blocks

__all__ = ["build_report", "build_blocks", "collect", "bench_table", "server_table"]


def build_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write report.html (self-contained) and report.md (+ report_assets/*.png) into out_dir (default runs_dir)."""
    res = collect(runs_dir)
    out = Path(out_dir) if out_dir is not None else Path(runs_dir)
    figures: list[Figure] = []
    blocks = build_blocks(res, figures)
    names = [f.name for f in figures]
    for i, f in enumerate(figures):  # make asset names unique
        if names.count(f.name) > 1:
            f.name = f.name[:-4] + f"-{i}.png"
    assets = out / ASSETS_DIR
    assets.mkdir(parents=True, exist_ok=True)
    for f in figures:
        atomic_write_bytes(assets / f.name, f.png)
    keep = {f.name for f in figures}
    for old in assets.glob("*.png"):  # drop images of a previous build that are no longer referenced
        if old.name not in keep:
            old.unlink(missing_ok=True)
    paths = {"html": atomic_write_text(out / REPORT_HTML, render_html(blocks)),
             "md": atomic_write_text(out / REPORT_MD, render_md(blocks)),
             "assets": assets}
    print(f"segvae report: {paths['html']} and {paths['md']} ({len(figures)} images)", flush=True)
    return paths
