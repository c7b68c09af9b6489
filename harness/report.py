"""`segvae report`: rebuild report.html and report.md from saved results (JSON + PNG), no training.

Flow: collect() reads every input once -> section builders turn it into a list of blocks
(headings, paragraphs, tables, images, code) -> render_html() / render_md() write the SAME
blocks, so the two reports cannot disagree. Tables are lists of already formatted rows.

Inputs (under runs_dir; JSON only, never unpickled):
  <run>/config.json + <run>/metrics.json   one per trained run (seeds of one experiment share config name)
  judges/<dataset>/judge.json              label-swap judges
  bench.json                               PyTorch vs ONNX Runtime records
  pipeline.json                            how the whole thing was produced (optional)
Image paths read from metrics.json must stay inside runs_dir and be PNG files; others are refused.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.figures import OVERLAY_LEGEND
from harness.io import atomic_write_bytes, atomic_write_text, inside, read_json

DASH = "—"
ASSETS_DIR = "report_assets"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINE_BACKEND = "torch-eager"


# =========================================================================== blocks
@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    name: str          # asset file name (safe, unique)
    png: bytes
    caption: str = ""


@dataclass
class Block:
    kind: str          # "h1" | "h2" | "h3" | "p" | "table" | "figure" | "code"
    content: Any


@dataclass
class Results:
    runs_dir: Path
    runs: list[dict] = field(default_factory=list)        # {"dir", "name", "config", "metrics"}
    judges: dict[str, dict] = field(default_factory=dict)
    bench: dict | None = None
    pipeline: dict | None = None
    warnings: list[str] = field(default_factory=list)


# =========================================================================== formatting
def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def fmt(v, digits: int = 4, suffix: str = "") -> str:
    """A number with fixed decimals; None, NaN, missing or non-numbers become a dash."""
    x = _num(v)
    return DASH if x is None else f"{x:.{digits}f}{suffix}"


def fmt_pct(v, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage."""
    x = _num(v)
    return DASH if x is None else f"{100 * x:.{digits}f}%"


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n - 1) of the numeric values; std is None for n < 2."""
    xs = [x for x in (_num(v) for v in values) if x is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def fmt_stat(values, digits: int = 4) -> str:
    """"mean ± std" over seeds (sample std), or the single value."""
    m, s, n = mean_std(values)
    if n == 0:
        return DASH
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _text(v) -> str:
    return DASH if v is None or v == "" else str(v)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# =========================================================================== collect
def collect(runs_dir: str | os.PathLike) -> Results:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"runs directory not found: {runs_dir}")
    res = Results(runs_dir=runs_dir.resolve())
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if not (d / "config.json").is_file():
            continue
        try:
            cfg = read_json(d / "config.json", "run config")
            metrics = read_json(d / "metrics.json", "run metrics")
        except UserError as e:
            res.warnings.append(f"skipped run {d.name}: {e}")
            continue
        if not isinstance(cfg, dict) or not isinstance(metrics, dict):
            res.warnings.append(f"skipped run {d.name}: config.json/metrics.json are not JSON objects")
            continue
        _merge_labelswap(d, metrics, res.warnings)
        res.runs.append({"dir": d, "name": str(cfg.get("name") or d.name), "config": cfg, "metrics": metrics})
    jroot = runs_dir / "judges"
    if jroot.is_dir():
        for d in sorted(p for p in jroot.iterdir() if p.is_dir() and (p / "judge.json").is_file()):
            try:
                meta = read_json(d / "judge.json", "judge metadata")
            except UserError as e:
                res.warnings.append(str(e))
                continue
            if isinstance(meta, dict):
                res.judges[str(meta.get("dataset") or d.name)] = meta
    for attr, fname in (("bench", "bench.json"), ("pipeline", "pipeline.json")):
        if (runs_dir / fname).is_file():
            try:
                doc = read_json(runs_dir / fname, fname)
                setattr(res, attr, doc if isinstance(doc, dict) else None)
            except UserError as e:
                res.warnings.append(str(e))
    if not (res.runs or res.judges or res.bench is not None or res.warnings):
        hint = (f"; {runs_dir} is itself a run folder: pass the folder that holds the runs, e.g. {runs_dir.parent}"
                if (runs_dir / "config.json").is_file() else "")
        raise UserError(f"no results in {runs_dir}: expected run folders (each with config.json + metrics.json, "
                        f"written by `segvae train`), judges/ or bench.json{hint}")
    return res


def _merge_labelswap(run: Path, metrics: dict, warnings: list[str]) -> None:
    """The judge stage's RUN/labelswap.json read beside training's metrics.json (in memory only)."""
    path = run / "labelswap.json"
    if not path.is_file():
        return
    try:
        doc = read_json(path, "label-swap scores")
    except UserError as e:
        warnings.append(str(e))
        return
    for key, value in (doc.items() if isinstance(doc, dict) else ()):
        if isinstance(value, dict) and isinstance(metrics.get(key), dict):
            metrics[key] = {**metrics[key], **value}
        else:
            metrics[key] = value


def groups(res: Results, task: str) -> dict[str, list[dict]]:
    """Runs of one task grouped by experiment name (seeds of one experiment together), seed-sorted."""
    out: dict[str, list[dict]] = {}
    for r in res.runs:
        if r["config"].get("task", r["metrics"].get("task")) == task:
            out.setdefault(r["name"], []).append(r)
    for runs in out.values():
        runs.sort(key=lambda r: (_num(r["config"].get("seed")) or 0, r["dir"].name))
    return dict(sorted(out.items()))


def read_png(res: Results, run: dict, rel) -> bytes | None:
    """A PNG named in a run's metrics.json; None (with a warning) if it is missing, not a PNG or
    points outside runs_dir."""
    if not isinstance(rel, str) or not rel:
        return None
    try:
        path = inside(res.runs_dir, str(run["dir"].resolve() / rel))  # resolves "..", symlinks, absolute paths
    except (UserError, ValueError) as e:
        res.warnings.append(f"{run['dir'].name}: {e}")
        return None
    try:
        data = path.read_bytes() if path.is_file() else None
    except OSError:
        data = None
    if data is None:
        res.warnings.append(f"{run['dir'].name}: image {rel!r} not found")
        return None
    if not data.startswith(PNG_MAGIC):
        res.warnings.append(f"{run['dir'].name}: {rel!r} is not a PNG file; not embedded")
        return None
    return data


def _safe_name(*parts: str) -> str:
    s = "-".join(parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:120] + ".png"


# =========================================================================== plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png_of(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _curve(runs: list[dict], key) -> tuple[list[int], list[float]]:
    """Per-epoch mean over seeds of key(history row)."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for row in r["metrics"].get("history") or []:
            if not isinstance(row, dict):
                continue
            e, v = _num(row.get("epoch")), _num(key(row))
            if e is not None and v is not None:
                by_epoch.setdefault(int(e), []).append(v)
    xs = sorted(by_epoch)
    return xs, [statistics.fmean(by_epoch[x]) for x in xs]


def plot_curves(grouped: dict[str, list[dict]], val_key: str, val_label: str) -> bytes | None:
    series = {name: (_curve(runs, lambda r: r.get("train_loss")), _curve(runs, lambda r: _get(r, "val", val_key)))
              for name, runs in grouped.items()}
    if not any(t[0] or v[0] for t, v in series.values()):
        return None
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, ((tx, ty), (vx, vy)) in series.items():
        if tx:
            a.plot(tx, ty, marker=".", label=name)
        if vx:
            b.plot(vx, vy, marker=".", label=name)
    a.set(title="train loss", xlabel="epoch")
    b.set(title=val_label, xlabel="epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png_of(fig)


def plot_throughput(records: list[dict]) -> bytes | None:
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.get("scenario") == "offline" and _num(r.get("batch_size")) and _num(r.get("samples_per_s")) is not None:
            ci = r.get("samples_per_s_ci") if isinstance(r.get("samples_per_s_ci"), list) else None
            v = float(r["samples_per_s"])
            lo, hi = (float(ci[0]), float(ci[1])) if ci and all(_num(x) is not None for x in ci) else (v, v)
            lines.setdefault(_label(r), []).append((float(r["batch_size"]), v, v - lo, hi - v))
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, pts in sorted(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[[p[2] for p in pts], [p[3] for p in pts]],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel="samples/s", title="offline throughput vs batch size (median, CI over rounds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png_of(fig)


def plot_latency(records: list[dict]) -> bytes | None:
    bars = [(_label(r), [_num(_get(r, "latency_ms", p)) for p in ("p50", "p90", "p99")])
            for r in _single_stream(records)]
    bars = [(n, v) for n, v in bars if any(x is not None for x in v)]
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(bars)), 3.6))
    width = 0.27
    for i, pct in enumerate(("p50", "p90", "p99")):
        ax.bar([j + (i - 1) * width for j in range(len(bars))], [v[i] or 0.0 for _, v in bars], width, label=pct)
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="ms", title="single-stream latency (batch 1)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _png_of(fig)


# =========================================================================== tables
def unet_table(grouped: dict[str, list[dict]]) -> Table:
    cols = ["experiment", "down", "up", "loss", "seeds (n)", "test Dice", "test IoU", "test Dice (per-image mean)",
            "val Dice", "train time (s)", "s/epoch", "epochs run", "best epoch"]
    rows = []
    for name, runs in grouped.items():
        cfg, ms = runs[0]["config"], [r["metrics"] for r in runs]
        rows.append([
            name, _text(_get(cfg, "model", "down")), _text(_get(cfg, "model", "up")), _text(cfg.get("loss")),
            f"{', '.join(str(r['config'].get('seed', '?')) for r in runs)} ({len(runs)})",
            fmt_stat([_get(m, "test", "dice") for m in ms]),
            fmt_stat([_get(m, "test", "iou") for m in ms]),
            fmt_stat([_get(m, "test", "dice_mean") for m in ms]),
            fmt_stat([_get(m, "val", "dice") for m in ms]),
            fmt_stat([m.get("train_seconds") for m in ms], 1),
            fmt_stat([m.get("seconds_per_epoch") for m in ms], 2),
            fmt_stat([m.get("epochs_run") for m in ms], 1),
            fmt_stat([m.get("best_epoch") for m in ms], 1),
        ])
    return Table(cols, rows, "test split; mean ± sample std over seeds where n > 1")


def _collapse_cell(ms: list[dict]) -> str:
    """The collapse verdict over seeds: the issue's words where any seed collapsed."""
    flags = [_get(m, "collapse", "collapsed") for m in ms]
    if not any(isinstance(f, bool) for f in flags):
        return "not measured"
    from harness.collapse import COLLAPSED_TEXT

    bad = sum(1 for f in flags if f is True)
    if not bad:
        return "no"
    return COLLAPSED_TEXT + ("" if bad == len(flags) else f" ({bad} of {len(flags)} seeds)")


def cvae_table(grouped: dict[str, list[dict]]) -> Table:
    cols = ["experiment", "dataset", "seeds (n)", "test ELBO (nats)", "test NLL", "test KL", "bits/dim",
            "recon MAE", "judge acc, true-label recon", "active units", "retention", "collapsed",
            "train time (s)", "epochs run"]
    rows = []
    for name, runs in grouped.items():
        cfg, ms = runs[0]["config"], [r["metrics"] for r in runs]
        latent = _get(ms[0], "collapse", "latent_dim") or _get(cfg, "model", "latent_dim")
        rows.append([
            name, _text(cfg.get("dataset")),
            f"{', '.join(str(r['config'].get('seed', '?')) for r in runs)} ({len(runs)})",
            fmt_stat([_get(m, "test", "elbo") for m in ms], 2),
            fmt_stat([_get(m, "test", "nll") for m in ms], 2),
            fmt_stat([_get(m, "test", "kl") for m in ms], 2),
            fmt_stat([_get(m, "test", "bpd") for m in ms], 3),
            fmt_stat([_get(m, "recon", "mae") for m in ms], 4),
            fmt_stat([_get(m, "recon", "judge_acc_true_label") for m in ms], 3),
            fmt_stat([_get(m, "collapse", "active_units") for m in ms], 1 if len(ms) > 1 else 0)
            + (f" / {latent}" if latent else ""),
            fmt_stat([_get(m, "collapse", "retention") for m in ms], 3),
            _collapse_cell(ms),
            fmt_stat([m.get("train_seconds") for m in ms], 1),
            fmt_stat([m.get("epochs_run") for m in ms], 1),
        ])
    return Table(cols, rows, "test split; ELBO is per image in nats (higher is better); mean ± sample std over "
                             "seeds. Active units: latent dimensions whose posterior mean varies across the test "
                             "set (Cov > 0.01); retention: how much swapped outputs of different sources differ "
                             "relative to real images of the new class (about 0: the output ignores its source; "
                             "collapsed when 0 units are active or retention < 0.2, see harness/collapse.py)")


def judge_table(res: Results) -> Table:
    """The judges' fitness: accuracy on the real test split as is and degraded, and on class means."""
    cols = ["dataset", "judge test acc (real images)", "blur σ 1 px", "blur σ 2 px", "contrast halved", "class-mean images",
            "test images", "precision", "epochs", "train time (s)", "fit"]
    rows = []
    for ds, j in sorted(res.judges.items()):
        acc = j.get("accuracy") if isinstance(j.get("accuracy"), dict) else {}
        n_means = _get(acc, "counts", "class_means")
        means = acc.get("class_means")
        means_cell = (f"{round(means * n_means)}/{n_means}" if _num(means) is not None and _num(n_means)
                      else fmt_pct(means))
        rows.append([ds, fmt_pct(acc.get("real", j.get("test_acc"))), fmt_pct(acc.get("blur1")),
                     fmt_pct(acc.get("blur2")), fmt_pct(acc.get("low_contrast")), means_cell,
                     _text(_get(acc, "counts", "test")), _text(j.get("precision")), _text(j.get("epochs")),
                     fmt(j.get("seconds"), 1), _fit_cell(j)])
    return Table(cols, rows, "fit: MNIST real ≥ 95%, blur σ 1 ≥ 90%, every class mean recognised; CIFAR-10 "
                             "real ≥ 70%, blur σ 1 ≥ 50%. Swap scores from an unfit judge are marked.")


def _fit_cell(j: dict | None) -> str:
    if not isinstance(j, dict) or not isinstance(j.get("fit"), bool):
        return "not measured"
    return "yes" if j["fit"] else "NO: " + "; ".join(map(str, j.get("fit_reasons") or []))


def _swap_cell(value: str, judge: dict | None) -> str:
    """A swap score, marked when its judge was measured unfit (the judge table says when a judge's
    fitness was never measured: judges trained before #16)."""
    if value == DASH or not isinstance(judge, dict) or judge.get("fit") is not False:
        return value
    return f"{value} (UNFIT judge)"


def swap_table(res: Results, cvae_groups: dict[str, list[dict]]) -> Table:
    """Label-swap success (share of swapped images the judge reads as the NEW label) per backend, each
    with the run's retention and collapse verdict beside it."""
    cols = ["experiment", "dataset", "judge acc on real test images", "backend", "precision", "label-swap success",
            "retention", "collapsed"]
    rows = []
    datasets = {name: runs[0]["config"].get("dataset") for name, runs in cvae_groups.items()}
    beside = {name: [fmt_stat([_get(r["metrics"], "collapse", "retention") for r in runs], 3),
                     _collapse_cell([r["metrics"] for r in runs])] for name, runs in cvae_groups.items()}
    seen = set()
    for r in _records(res):
        if r.get("task") != "cvae" or r.get("judge_acc") is None:
            continue
        key = (r.get("experiment"), r.get("backend"), r.get("precision"))
        if key in seen:
            continue
        seen.add(key)
        ds = datasets.get(r.get("experiment"))
        j = res.judges.get(ds)
        rows.append([_text(r.get("experiment")), _text(ds), fmt_pct(_get(j, "test_acc")),
                     _text(r.get("backend")), _text(r.get("precision")), _swap_cell(fmt_pct(r.get("judge_acc")), j),
                     *beside.get(r.get("experiment"), [DASH, "not measured"])])
    for name, runs in cvae_groups.items():  # PyTorch figures: every test image, and the 25 grid images
        ms = [r["metrics"] for r in runs]
        ds = datasets.get(name)
        j = res.judges.get(ds)
        for key, what in (("test_swap_acc", "test split ({n} images, PyTorch)"), ("grid_swap_acc", "grid (25 images, PyTorch)")):
            vals = [x for x in (_num(_get(m, "judge", key)) for m in ms) if x is not None]
            if vals:
                n = _get(ms[0], "judge", "test_swap_count") or "all"
                rows.append([name, _text(ds), fmt_pct(_get(j, "test_acc")), what.format(n=n), "fp32",
                             _swap_cell(fmt_stat([100 * x for x in vals], 1) + "%", j), *beside[name]])
    return Table(cols, rows, "success = share of label-swapped outputs the judge classifies as the new label "
                             "(chance 10%); a collapsed model draws class templates and scores high while "
                             "ignoring its source, so read success only where retention ≥ 0.2")


def swap_labels_table(labels, classes: tuple[str, ...] | None) -> Table | None:
    """The grid's (true -> wrong) labels laid out 5 per row, like the grid."""
    if not isinstance(labels, list) or not labels:
        return None

    def name(v):
        if classes and isinstance(v, int) and 0 <= v < len(classes):
            return classes[v]
        return _text(v)

    cells = []
    for pair in labels:
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            cells.append(f"{name(pair[0])} → {name(pair[1])}")
        else:
            cells.append(DASH)
    width = 5
    rows = [cells[i:i + width] + [""] * (width - len(cells[i:i + width])) for i in range(0, len(cells), width)]
    return Table([f"col {i + 1}" for i in range(width)], rows, "true label → label the image was decoded with")


def _records(res: Results) -> list[dict]:
    recs = (res.bench or {}).get("results") or []
    # per-rank offline records of a multi-process bench are summed into a rank=None record: keep those
    return [r for r in recs if isinstance(r, dict) and r.get("rank") is None]


def _label(r: dict) -> str:
    return f"{r.get('backend', '?')} ({r.get('precision', '?')})"


def _single_stream(records: list[dict]) -> list[dict]:
    out: dict[tuple, dict] = {}
    for r in records:
        if r.get("scenario") == "single-stream":
            out.setdefault((r.get("backend"), r.get("precision")), r)
    return list(out.values())


def bench_groups(res: Results) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in _records(res):
        key = str(r.get("experiment") or r.get("run") or "?")
        if r.get("run") and r.get("run") != r.get("experiment"):
            key = f"{key} (run {r['run']})"
        out.setdefault(key, []).append(r)
    return dict(sorted(out.items()))


def _ci_cell(v, ci, digits: int) -> str:
    """'93.6 [91.2-95.0]' for a bench v2 median with its interval; the plain number otherwise."""
    if _num(v) is None:
        return DASH
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(x) is not None for x in ci):
        return f"{v:.{digits}f} [{ci[0]:.{digits}f}-{ci[1]:.{digits}f}]"
    return fmt(v, digits)


def _ratio_cell(r) -> str:
    """'3.9× [3.7-4.1]': two significant figures, what a few paired rounds support."""
    if not isinstance(r, dict) or any(_num(r.get(k)) is None for k in ("median", "lo", "hi")):
        return DASH
    sig = lambda x: f"{x:.2g}" if x < 10 else f"{x:.0f}"  # noqa: E731
    return f"{sig(r['median'])}× [{sig(r['lo'])}-{sig(r['hi'])}]"


def _bench_verdicts(rs: list[dict]) -> tuple[str, str]:
    """(accuracy gate, validity) of one backend's records: pass/FAIL with the reason; valid or
    which scenario is invalid and why (first reason)."""
    gate = next((r for r in rs if r.get("accuracy_pass") is not None), None)
    acc = DASH if gate is None else ("pass" if gate["accuracy_pass"] else
                                     "FAIL: " + "; ".join(_get(gate, "accuracy_gate", "reasons") or []))
    flagged = [r for r in rs if r.get("valid") is False]
    if not any("valid" in r for r in rs):
        return acc, DASH
    if not flagged:
        return acc, "valid"
    return acc, "; ".join(f"{r.get('scenario')} bs{r.get('batch_size')}: {(r.get('invalid_reasons') or ['?'])[0]}"
                          for r in flagged[:2]) + (f" (+{len(flagged) - 2} more)" if len(flagged) > 2 else "")


def bench_table(records: list[dict]) -> Table:
    """One row per (backend, precision): latency, throughput per batch size (medians [95% CI] over
    rounds for bench v2), % of peak, accuracy with its count and gate, speed-ups, validity."""
    batch_sizes = sorted({int(r["batch_size"]) for r in records
                          if r.get("scenario") == "offline" and _num(r.get("batch_size"))})
    by_backend: dict[tuple, list[dict]] = {}
    for r in records:
        by_backend.setdefault((r.get("backend"), r.get("precision")), []).append(r)
    base = by_backend.get((BASELINE_BACKEND, "fp32")) or next(
        (v for k, v in by_backend.items() if k[0] == BASELINE_BACKEND), None)
    task = next((r.get("task") for r in records if r.get("task")), None)

    def offline(rs, bs):
        return next((r for r in rs if r.get("scenario") == "offline" and _num(r.get("batch_size")) == bs), None)

    def best(rs):
        return max((r for r in rs if r.get("scenario") == "offline" and _num(r.get("samples_per_s")) is not None),
                   key=lambda r: r["samples_per_s"], default=None)

    def ss(rs):
        return next((r for r in rs if r.get("scenario") == "single-stream"), None)

    base_p50 = _num(_get(ss(base or []), "latency_ms", "p50"))
    base_thr = _num((best(base or []) or {}).get("samples_per_s"))
    acc_cols = ["Dice", "Dice Δ vs eager"] if task == "segmentation" else ["max |Δ| vs eager", "judge (swap)"]
    cols = (["backend", "precision", "p50 ms", "p90 ms", "p99 ms", "queries/round"]
            + [f"samples/s @bs{b}" for b in batch_sizes]
            + ["best % of peak", *acc_cols, "accuracy n", "accuracy gate", "speed-up p50", "speed-up best throughput",
               "peak RSS MB", "verdict"])
    rows = []
    for (backend, precision), rs in by_backend.items():
        s = ss(rs) or {}
        lat, lci = s.get("latency_ms"), s.get("latency_ms_ci") or {}
        pct = max((p for p in (_num(r.get("pct_of_peak")) for r in rs) if p is not None), default=None)
        acc = next((r for r in rs if any(r.get(k) is not None for k in
                                         ("dice", "dice_delta", "max_abs_err", "judge_acc"))), {})
        if task == "segmentation":
            acc_vals = [fmt(acc.get("dice"), 4), fmt(acc.get("dice_delta"), 4)]
        else:
            me = _num(acc.get("max_abs_err"))
            acc_vals = [DASH if me is None else f"{me:.2e}", fmt_pct(acc.get("judge_acc"))]
        p50, top = _num(_get(lat, "p50")), best(rs) or {}
        if "speedup" in top or "speedup_p50" in s:  # bench v2: paired per round, with the interval
            sp50 = "1×" if backend == BASELINE_BACKEND else _ratio_cell(s.get("speedup_p50"))
            sthr = "1×" if backend == BASELINE_BACKEND else _ratio_cell(top.get("speedup"))
        else:
            thr = _num(top.get("samples_per_s"))
            sp50 = fmt(base_p50 / p50, 2, "×") if base_p50 and p50 else DASH
            sthr = fmt(thr / base_thr, 2, "×") if base_thr and thr else DASH
        p90 = _get(lat, "p90")
        p90_cell = fmt(p90, 2) + ("*" if _get(s, "percentile_ok", "p90") is False and _num(p90) is not None else "")
        p99_cell = fmt(_get(lat, "p99"), 2) + ("*" if _get(s, "percentile_ok", "p99") is False and _num(_get(lat, "p99")) is not None else "")
        rss = max((x for x in (_num(r.get("peak_rss_mb")) for r in rs) if x is not None), default=None)
        gate, verdict = _bench_verdicts(rs)
        rows.append([
            _text(backend), _text(precision), _ci_cell(p50, lci.get("p50"), 2), p90_cell, p99_cell,
            _text(s.get("queries_per_round")) if s.get("queries_per_round") is not None else DASH,
            *[_ci_cell((offline(rs, b) or {}).get("samples_per_s"), (offline(rs, b) or {}).get("samples_per_s_ci"), 1)
              for b in batch_sizes],
            fmt(pct, 1, "%"), *acc_vals, _text(acc.get("accuracy_count")) if acc.get("accuracy_count") else DASH,
            gate, sp50, sthr, fmt(rss, 0), verdict,
        ])
    cov = next((_num(r.get("ci_coverage")) for r in records if _num(r.get("ci_coverage"))), None)
    note = (f"; [a-b]: order-statistic interval of the median over rounds (true coverage {100 * cov:.1f}%), "
            "speed-ups paired by round; * percentile from fewer queries than MLPerf LoadGen's minimum") if cov else ""
    return Table(cols, rows, f"latency: single-stream, batch 1; speed-up vs {BASELINE_BACKEND}{note}")


def server_table(records: list[dict]) -> Table | None:
    rs = [r for r in records if r.get("scenario") == "server"]
    if not rs:
        return None
    cols = ["backend", "precision", "target rate (q/s)", "achieved rate (q/s)", "p99 ms", "latency bound ms",
            "bound met", "highest rate meeting the bound (q/s)"]
    rows = [[_text(r.get("backend")), _text(r.get("precision")), fmt(r.get("target_rate"), 1),
             fmt(r.get("achieved_rate"), 1), _ci_cell(_get(r, "latency_ms", "p99"), _get(r, "latency_ms_ci", "p99"), 2),
             fmt(r.get("latency_bound_ms"), 1),
             DASH if r.get("bound_met") is None else ("yes" if r.get("bound_met") else "no"),
             fmt(r.get("max_rate"), 1)] for r in rs]
    return Table(cols, rows, "server scenario: Poisson arrivals at one target rate and bound per model, the same "
                             "for every backend; latency from the scheduled arrival")


def env_table(res: Results) -> Table | None:
    env = (res.bench or {}).get("env")
    peak = (res.bench or {}).get("peak")
    rows = []
    if isinstance(env, dict):
        for k, v in env.items():
            if k in ("command", "argv", "command_line"):
                continue
            rows.append([str(k), _text(v if not isinstance(v, (list, dict)) else _compact(v))])
    if isinstance(peak, dict):
        for k, v in peak.items():
            rows.append([f"peak {k}", fmt(v, 1) if _num(v) is not None else _text(_compact(v))])
    return Table(["item", "value"], rows) if rows else None


def _compact(v) -> str:
    import json

    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)


# =========================================================================== sections
def build_blocks(res: Results, figures: list[Figure]) -> list[Block]:
    blocks: list[Block] = [Block("h1", "segvae-bench report"),
                           Block("p", f"Built from saved results in {res.runs_dir.name}/ "
                                      f"({len(res.runs)} runs). Nothing was retrained.")]
    unets, cvaes = groups(res, "segmentation"), groups(res, "cvae")
    blocks += _unet_section(res, unets, figures)
    blocks += _cvae_section(res, cvaes, figures)
    blocks += _judge_section(res, cvaes)
    blocks += _bench_section(res, figures)
    blocks += _reproduce_section(res)
    if res.warnings:
        blocks += [Block("h2", "Warnings"), Block("code", "\n".join(res.warnings))]
    return blocks


def _figure(figures: list[Figure], name: str, png: bytes | None, caption: str) -> list[Block]:
    if png is None:
        return []
    fig = Figure(_safe_name(name), png, caption)
    figures.append(fig)
    return [Block("figure", fig)]


def _unet_section(res: Results, unets: dict, figures: list[Figure]) -> list[Block]:
    blocks = [Block("h2", "Segmentation: UNet variants (Oxford-IIIT Pet)")]
    if not unets:
        return blocks + [Block("p", "Not run: no segmentation runs found.")]
    blocks.append(Block("table", unet_table(unets)))
    blocks += _figure(figures, "unet-curves", plot_curves(unets, "dice", "val Dice"),
                      "train loss and validation Dice per epoch (mean over seeds)")
    blocks.append(Block("h3", "Test overlays"))
    for name, runs in unets.items():
        for r in runs:
            png = read_png(res, r, _get(r["metrics"], "samples", "overlays"))
            blocks += _figure(figures, f"overlay-{r['dir'].name}", png,
                              f"{name}, seed {r['config'].get('seed', '?')}, test images: {OVERLAY_LEGEND}")
    return blocks


def _cvae_section(res: Results, cvaes: dict, figures: list[Figure]) -> list[Block]:
    blocks = [Block("h2", "Conditional VAEs (MNIST, CIFAR-10)")]
    if not cvaes:
        return blocks + [Block("p", "Not run: no CVAE runs found.")]
    blocks.append(Block("table", cvae_table(cvaes)))
    blocks += _figure(figures, "cvae-curves", plot_curves(cvaes, "elbo", "val ELBO"),
                      "train loss and validation ELBO per epoch (mean over seeds)")
    for name, runs in cvaes.items():
        r = runs[0]
        samples = r["metrics"].get("samples")
        samples = samples if isinstance(samples, dict) else {}
        blocks.append(Block("h3", f"Label swap: {name} (seed {r['config'].get('seed', '?')})"))
        blocks.append(Block("p", "Each image is encoded with its TRUE label and decoded with a WRONG one."))
        c = r["metrics"].get("collapse")
        if isinstance(c, dict):
            from harness.collapse import collapse_line

            blocks.append(Block("p", collapse_line(name, c)))
        fig = read_png(res, r, samples.get("figure"))
        if fig is not None:
            blocks += _figure(figures, f"swap-figure-{r['dir'].name}", fig, f"{name}: sources and 5x5 label-swap grid")
        else:
            blocks += _figure(figures, f"swap-sources-{r['dir'].name}", read_png(res, r, samples.get("sources")),
                              f"{name}: source images")
            blocks += _figure(figures, f"swap-grid-{r['dir'].name}", read_png(res, r, samples.get("grid")),
                              f"{name}: 5x5 label-swap grid")
        t = swap_labels_table(samples.get("labels"), _classes(r["config"].get("dataset")))
        if t is not None:
            blocks.append(Block("table", t))
    return blocks


def _classes(dataset) -> tuple[str, ...] | None:
    if dataset == "cifar10":
        try:
            from harness.data import CIFAR10_CLASSES
        except Exception:  # noqa: BLE001 - names are cosmetic
            return None
        return tuple(CIFAR10_CLASSES)
    return None


def _judge_section(res: Results, cvaes: dict) -> list[Block]:
    blocks = [Block("h2", "Judge scores")]
    if not res.judges:
        blocks.append(Block("p", "Judges: not run (no judges/<dataset>/judge.json)."))
    else:
        blocks.append(Block("p", "A small CNN per dataset, trained on the real training split with the "
                                 "degradations a generator produces (blur, low contrast, noise), and measured on "
                                 "the real test split as is and degraded before any swap score is read."))
        blocks.append(Block("table", judge_table(res)))
    t = swap_table(res, cvaes)
    if t.rows:
        blocks.append(Block("table", t))
    else:
        blocks.append(Block("p", "Label-swap scores: not run (no judged CVAE bench records)."))
    return blocks


def _bench_section(res: Results, figures: list[Figure]) -> list[Block]:
    blocks = [Block("h2", "PyTorch vs ONNX Runtime")]
    if res.bench is None:
        return blocks + [Block("p", "Benchmark: not run (no bench.json).")]
    bg = bench_groups(res)
    if not bg:
        blocks.append(Block("p", "Benchmark: not run (bench.json has no results)."))
    for name, recs in bg.items():
        blocks.append(Block("h3", name))
        blocks.append(Block("table", bench_table(recs)))
        st = server_table(recs)
        if st is not None:
            blocks.append(Block("table", st))
        blocks += _figure(figures, f"bench-throughput-{name}", plot_throughput(recs), f"{name}: throughput vs batch size")
        blocks += _figure(figures, f"bench-latency-{name}", plot_latency(recs), f"{name}: latency percentiles")
    skipped = res.bench.get("skipped") or {}
    blocks.append(Block("h3", "Skipped backends"))
    if isinstance(skipped, dict) and skipped:
        blocks.append(Block("table", Table(["backend", "reason"], [[str(k), _text(v)] for k, v in skipped.items()])))
    else:
        blocks.append(Block("p", "None."))
    return blocks


def _reproduce_section(res: Results) -> list[Block]:
    blocks = [Block("h2", "Environment and reproduction")]
    et = env_table(res)
    blocks.append(Block("table", et) if et else Block("p", "Environment: not recorded (no bench.json env)."))
    env = (res.bench or {}).get("env") or {}
    cmd = next((env.get(k) for k in ("command", "argv", "command_line") if env.get(k)), None) \
        if isinstance(env, dict) else None
    if cmd:
        blocks += [Block("p", "Bench command:"), Block("code", " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd))]
    p = res.pipeline
    blocks.append(Block("h3", "Reproduce"))
    if not p:
        return blocks + [Block("p", "Pipeline: not run (no pipeline.json).")]
    blocks.append(Block("p", f"preset {_text(p.get('preset'))}, data root {_text(p.get('data_root'))}, "
                             f"wall time {fmt(p.get('wall_seconds'), 1)} s"))
    reused = p.get("reused_runs") or []
    if isinstance(reused, list) and reused:
        blocks.append(Block("p", f"Reused finished runs and judges (same config, trained before this invocation; "
                                 f"their commands are listed below): {', '.join(map(_text, reused))}"))
    cmds = p.get("commands") or []
    if isinstance(cmds, list) and cmds:
        blocks.append(Block("code", "\n".join(str(c) for c in cmds)))
    return blocks


# =========================================================================== render
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:anywhere}.scroll{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:.6em 0 1.2em;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;overflow-wrap:normal}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}caption{caption-side:bottom;font-size:12px;color:#666;text-align:left;
overflow-wrap:anywhere}figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px;
white-space:pre-wrap}"""


def render_html(blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>segvae-bench report</title>", f"<style>{CSS}</style>", "</head>", "<body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{e(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.content)}</p>")
        elif b.kind == "code":
            out.append(f"<pre><code>{e(b.content)}</code></pre>")
        elif b.kind == "table":
            t: Table = b.content
            out.append('<div class="scroll"><table>')  # wide tables scroll in their box, not the page
            if t.caption:
                out.append(f"<caption>{e(t.caption)}</caption>")
            out.append("<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows]
            out.append("</tbody></table></div>")
        elif b.kind == "figure":
            f: Figure = b.content
            data = base64.b64encode(f.png).decode("ascii")
            out.append(f'<figure><img alt="{e(f.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(f.caption)}</figcaption></figure>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(s: str) -> str:
    return _md_text(s).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _md_text(s) -> str:
    """Markdown viewers render raw HTML: neutralise it in text that came from files."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_md(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + _md_cell(b.content), ""]
        elif b.kind == "p":
            out += [_md_text(b.content), ""]
        elif b.kind == "code":
            fence = "````" if "```" in str(b.content) else "```"
            out += [fence, str(b.content), fence, ""]
        elif b.kind == "table":
            t: Table = b.content
            out.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
            out.append("|" + "|".join("---" for _ in t.columns) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out += [""] + ([f"*{_md_cell(t.caption)}*", ""] if t.caption else [])
        elif b.kind == "figure":
            f: Figure = b.content
            alt = _md_cell(f.caption).replace("[", "(").replace("]", ")")
            out += [f"![{alt}]({ASSETS_DIR}/{f.name})", ""]
    return "\n".join(out)


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
    paths = {"html": atomic_write_text(out / "report.html", render_html(blocks)),
             "md": atomic_write_text(out / "report.md", render_md(blocks)),
             "assets": assets}
    print(f"segvae report: {paths['html']} and {paths['md']} ({len(figures)} images)", flush=True)
    return paths
