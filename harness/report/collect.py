"""Read every input of a report once: runs (config, metrics, label-swap scores), judges, bench, pipeline."""
from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UserError
from harness.io import inside, read_json
from harness.run_folder import (BENCH_FILE, CONFIG_FILE, EXPORT_FILE, JUDGE_FILE, JUDGES_DIR, LABELSWAP_FILE,
                                METRICS_FILE, ONNX_DIR, PIPELINE_FILE)
from harness.report.model import PNG_MAGIC, Results, as_number


# =========================================================================== collect
def collect(runs_dir: str | os.PathLike) -> Results:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"runs directory not found: {runs_dir}")
    res = Results(runs_dir=runs_dir.resolve())
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if not (d / CONFIG_FILE).is_file():
            continue
        try:
            cfg = read_json(d / CONFIG_FILE, "run config")
            metrics = read_json(d / METRICS_FILE, "run metrics")
        except UserError as e:
            res.warnings.append(f"skipped run {d.name}: {e}")
            continue
        if not isinstance(cfg, dict) or not isinstance(metrics, dict):
            res.warnings.append(f"skipped run {d.name}: config.json/metrics.json are not JSON objects")
            continue
        _merge_labelswap(d, metrics, res.warnings)
        export = None
        if (d / ONNX_DIR / EXPORT_FILE).is_file():
            try:
                export = read_json(d / ONNX_DIR / EXPORT_FILE, "export metadata")
            except UserError as e:
                res.warnings.append(str(e))
        res.runs.append({"dir": d, "name": str(cfg.get("name") or d.name), "config": cfg, "metrics": metrics,
                         "export": export if isinstance(export, dict) else None, "profile": _profile(d, res.warnings)})
    jroot = runs_dir / JUDGES_DIR
    if jroot.is_dir():
        for d in sorted(p for p in jroot.iterdir() if p.is_dir() and (p / JUDGE_FILE).is_file()):
            try:
                meta = read_json(d / JUDGE_FILE, "judge metadata")
            except UserError as e:
                res.warnings.append(str(e))
                continue
            if isinstance(meta, dict):
                res.judges[str(meta.get("dataset") or d.name)] = meta
    for attr, fname in (("bench", BENCH_FILE), ("pipeline", PIPELINE_FILE)):
        if (runs_dir / fname).is_file():
            try:
                doc = read_json(runs_dir / fname, fname)
                setattr(res, attr, doc if isinstance(doc, dict) else None)
            except UserError as e:
                res.warnings.append(str(e))
    if not (res.runs or res.judges or res.bench is not None or res.warnings):
        hint = (f"; {runs_dir} is itself a run folder: pass the folder that holds the runs, e.g. {runs_dir.parent}"
                if (runs_dir / CONFIG_FILE).is_file() else "")
        raise UserError(f"no results in {runs_dir}: expected run folders (each with config.json + metrics.json, "
                        f"written by `segvae train`), judges/ or bench.json{hint}")
    return res


def _profile(run: Path, warnings: list[str]) -> dict | None:
    """RUN/profile.json written by `segvae profile`, when there is one."""
    from harness.profile import PROFILE_JSON

    if not (run / PROFILE_JSON).is_file():
        return None
    try:
        doc = read_json(run / PROFILE_JSON, "per-layer profile")
    except UserError as e:
        warnings.append(str(e))
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list) or not isinstance(doc.get("backends"), dict):
        warnings.append(f"{run.name}/{PROFILE_JSON}: not a profile written by `segvae profile`; skipped")
        return None
    return doc


def _merge_labelswap(run: Path, metrics: dict, warnings: list[str]) -> None:
    """The judge stage's RUN/labelswap.json read beside training's metrics.json (in memory only)."""
    path = run / LABELSWAP_FILE
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
        runs.sort(key=lambda r: (as_number(r["config"].get("seed")) or 0, r["dir"].name))
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
