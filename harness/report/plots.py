"""The report's matplotlib figures, as PNG bytes (headless)."""
from __future__ import annotations

import io
import statistics

from harness.report.bench_tables import _label, _single_stream
from harness.report.model import as_number, dig


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
            e, v = as_number(row.get("epoch")), as_number(key(row))
            if e is not None and v is not None:
                by_epoch.setdefault(int(e), []).append(v)
    xs = sorted(by_epoch)
    return xs, [statistics.fmean(by_epoch[x]) for x in xs]


def plot_curves(grouped: dict[str, list[dict]], val_key: str, val_label: str) -> bytes | None:
    series = {name: (_curve(runs, lambda r: r.get("train_loss")), _curve(runs, lambda r: dig(r, "val", val_key)))
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
        if r.get("scenario") == "offline" and as_number(r.get("batch_size")) and as_number(r.get("samples_per_s")) is not None:
            ci = r.get("samples_per_s_ci") if isinstance(r.get("samples_per_s_ci"), list) else None
            v = float(r["samples_per_s"])
            lo, hi = (float(ci[0]), float(ci[1])) if ci and all(as_number(x) is not None for x in ci) else (v, v)
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
    bars = [(_label(r), [as_number(dig(r, "latency_ms", p)) for p in ("p50", "p90", "p99")])
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
