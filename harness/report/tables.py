"""Tables of the trained models: UNets, CVAEs, judges, label swaps, environment."""
from __future__ import annotations

from harness.report.bench_tables import _records
from harness.report.model import DASH, Results, Table, as_number, as_text, dig, fmt, fmt_pct, fmt_stat


# =========================================================================== tables
def unet_table(grouped: dict[str, list[dict]]) -> Table:
    cols = ["experiment", "down", "up", "loss", "seeds (n)", "test Dice", "test IoU", "test Dice (per-image mean)",
            "val Dice", "train time (s)", "s/epoch", "epochs run", "best epoch"]
    rows = []
    for name, runs in grouped.items():
        cfg, ms = runs[0]["config"], [r["metrics"] for r in runs]
        rows.append([
            name, as_text(dig(cfg, "model", "down")), as_text(dig(cfg, "model", "up")), as_text(cfg.get("loss")),
            f"{', '.join(str(r['config'].get('seed', '?')) for r in runs)} ({len(runs)})",
            fmt_stat([dig(m, "test", "dice") for m in ms]),
            fmt_stat([dig(m, "test", "iou") for m in ms]),
            fmt_stat([dig(m, "test", "dice_mean") for m in ms]),
            fmt_stat([dig(m, "val", "dice") for m in ms]),
            fmt_stat([m.get("train_seconds") for m in ms], 1),
            fmt_stat([m.get("seconds_per_epoch") for m in ms], 2),
            fmt_stat([m.get("epochs_run") for m in ms], 1),
            fmt_stat([m.get("best_epoch") for m in ms], 1),
        ])
    return Table(cols, rows, "test split; mean ± sample std over seeds where n > 1")


def _collapse_cell(ms: list[dict]) -> str:
    """The collapse verdict over seeds: the issue's words where any seed collapsed."""
    flags = [dig(m, "collapse", "collapsed") for m in ms]
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
        latent = dig(ms[0], "collapse", "latent_dim") or dig(cfg, "model", "latent_dim")
        rows.append([
            name, as_text(cfg.get("dataset")),
            f"{', '.join(str(r['config'].get('seed', '?')) for r in runs)} ({len(runs)})",
            fmt_stat([dig(m, "test", "elbo") for m in ms], 2),
            fmt_stat([dig(m, "test", "nll") for m in ms], 2),
            fmt_stat([dig(m, "test", "kl") for m in ms], 2),
            fmt_stat([dig(m, "test", "bpd") for m in ms], 3),
            fmt_stat([dig(m, "recon", "mae") for m in ms], 4),
            fmt_stat([dig(m, "recon", "judge_acc_true_label") for m in ms], 3),
            fmt_stat([dig(m, "collapse", "active_units") for m in ms], 1 if len(ms) > 1 else 0)
            + (f" / {latent}" if latent else ""),
            fmt_stat([dig(m, "collapse", "retention") for m in ms], 3),
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
        n_means = dig(acc, "counts", "class_means")
        means = acc.get("class_means")
        means_cell = (f"{round(means * n_means)}/{n_means}" if as_number(means) is not None and as_number(n_means)
                      else fmt_pct(means))
        rows.append([ds, fmt_pct(acc.get("real", j.get("test_acc"))), fmt_pct(acc.get("blur1")),
                     fmt_pct(acc.get("blur2")), fmt_pct(acc.get("low_contrast")), means_cell,
                     as_text(dig(acc, "counts", "test")), as_text(j.get("precision")), as_text(j.get("epochs")),
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
            "images", "retention", "collapsed"]
    rows = []
    datasets = {name: runs[0]["config"].get("dataset") for name, runs in cvae_groups.items()}
    beside = {name: [fmt_stat([dig(r["metrics"], "collapse", "retention") for r in runs], 3),
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
        rows.append([as_text(r.get("experiment")), as_text(ds), fmt_pct(dig(j, "test_acc")),
                     as_text(r.get("backend")), as_text(r.get("precision")), _swap_cell(fmt_pct(r.get("judge_acc")), j),
                     as_text(r.get("accuracy_count")), *beside.get(r.get("experiment"), [DASH, "not measured"])])
    for name, runs in cvae_groups.items():  # PyTorch figures: every test image, and the 25 grid images
        ms = [r["metrics"] for r in runs]
        ds = datasets.get(name)
        j = res.judges.get(ds)
        for key, what in (("test_swap_acc", "test split, PyTorch"), ("grid_swap_acc", "5x5 grid, PyTorch")):
            vals = [x for x in (as_number(dig(m, "judge", key)) for m in ms) if x is not None]
            if vals:
                n = dig(ms[0], "judge", "test_swap_count") if key == "test_swap_acc" else 25
                rows.append([name, as_text(ds), fmt_pct(dig(j, "test_acc")), what, "fp32",
                             _swap_cell(fmt_stat([100 * x for x in vals], 1) + "%", j), as_text(n), *beside[name]])
    return Table(cols, rows, "success = share of label-swapped outputs the judge classifies as the new label "
                             "(chance 10%), over `images` test images (backends: the bench's accuracy set); a collapsed model draws class templates and scores high while "
                             "ignoring its source, so read success only where retention ≥ 0.2")


def swap_labels_table(labels, classes: tuple[str, ...] | None) -> Table | None:
    """The grid's (true -> wrong) labels laid out 5 per row, like the grid."""
    if not isinstance(labels, list) or not labels:
        return None

    def name(v):
        if classes and isinstance(v, int) and 0 <= v < len(classes):
            return classes[v]
        return as_text(v)

    cells = []
    for pair in labels:
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            cells.append(f"{name(pair[0])} → {name(pair[1])}")
        else:
            cells.append(DASH)
    width = 5
    rows = [cells[i:i + width] + [""] * (width - len(cells[i:i + width])) for i in range(0, len(cells), width)]
    return Table([f"col {i + 1}" for i in range(width)], rows, "true label → label the image was decoded with")


def env_table(res: Results) -> Table | None:
    env = (res.bench or {}).get("env")
    peak = (res.bench or {}).get("peak")
    rows = []
    if isinstance(env, dict):
        for k, v in env.items():
            if k in ("command", "argv", "command_line"):
                continue
            rows.append([str(k), as_text(v if not isinstance(v, (list, dict)) else _compact(v))])
    if isinstance(peak, dict):
        for k, v in peak.items():
            rows.append([f"peak {k}", _peak_text(v)])
    return Table(["item", "value"], rows) if rows else None


def _peak_text(v) -> str:
    """A probe entry as a reader wants it: "179 G/s (numpy matmul float32, n=2048)" or why it has none."""
    if as_number(v) is not None:
        return fmt(v, 1)
    if isinstance(v, dict) and "method" in v:
        g = as_number(v.get("gflops_per_s"))
        if g is not None:
            return f"{g:.0f} G/s ({v['method']}, n={v.get('n')})"
        return f"{v.get('status') or 'not measured'}: {v.get('note') or ''}".strip()
    return as_text(_compact(v))


def _compact(v) -> str:
    import json

    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)
