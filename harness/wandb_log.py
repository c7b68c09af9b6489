"""Weights & Biases for `segvae export` and `segvae bench` (`--log-with wandb`), so the lineage reads
training run -> ONNX model artifact -> bench run.

- export: the ONNX files + export.json as a `model` artifact whose description and metadata name the
  training run it came from (its W&B run id when training logged one, else the run folder and the
  config hash); a sidecar `wandb_artifact.json` in the ONNX folder lets a later bench find it.
- bench: the results as a W&B Table (one row per whole-job record), bar charts of throughput and
  p50 latency per backend, and `env` in the run config; the ONNX artifacts it measured are used
  as inputs (`run.use_artifact`) online, and listed in the config as `onnx_artifacts` in any mode.

Offline by default exactly as training is (WANDB_MODE=offline unless you ran `wandb login` or set
WANDB_API_KEY; an explicit WANDB_MODE wins): never blocks, never needs an account; `wandb sync`
uploads later. Under `accelerate launch` only rank 0 logs (the other ranks return at once).
A logging failure is a warning: the results on disk are what counts.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from harness import bench_fields as bf
from harness.config import ExperimentConfig
from harness.errors import UserError
from harness.io import atomic_write_json, read_json
from harness.run_folder import CONFIG_FILE, EXPORT_FILE, ONNX_DIR, WANDB_ARTIFACT_FILE, WANDB_DIR, WANDB_RUN_FILE

PROJECT = "segvae-bench"
DEFAULT_HOST = "https://api.wandb.ai"


def logged_in() -> bool:
    """An API key reachable without the network: WANDB_API_KEY, or `wandb login`'s netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST
    try:  # wandb's own reader (recent versions): same file and host rules as `wandb login`
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return bool(read_netrc_auth(host=host))
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - a malformed netrc or host: not logged in
        return False
    import netrc
    from urllib.parse import urlsplit

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        creds = netrc.netrc(path).authenticators(urlsplit(host).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])


def default_mode() -> str:
    """Set WANDB_MODE=offline unless logged in (an explicit WANDB_MODE is kept); returns the mode."""
    if not os.environ.get("WANDB_MODE") and not logged_in():
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    return os.environ.get("WANDB_MODE", "online")


def is_main_process() -> bool:
    """Rank 0 (or no launcher): `accelerate launch` sets RANK in every process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def check_available() -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise UserError("--log-with wandb needs the wandb package: pip install 'segvae-bench[wandb]' "
                        "(or pip install wandb)")


def _warn(what: str, e: BaseException) -> None:
    print(f"warning: could not log {what} to W&B ({type(e).__name__}: {e}); the results on disk are "
          f"complete", file=sys.stderr, flush=True)


def _init(wandb_dir: Path, job_type: str, name: str, config: dict):
    import wandb

    mode = default_mode()
    wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=PROJECT, dir=str(wandb_dir), job_type=job_type, name=name, config=config,
                     mode=mode, settings=wandb.Settings(init_timeout=60))
    return run, mode


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _artifact_name(experiment: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{experiment}-onnx")[:120]


# ----------------------------------------------------------------------------- training run
def training_run(run_dir: str | os.PathLike, export: dict | None = None) -> dict:
    """Who trained run_dir: its W&B run (id, project, path) when training logged one, plus the run
    folder, experiment and config hash, which name it without W&B."""
    run_dir = Path(run_dir)
    cfg = {}
    if (run_dir / CONFIG_FILE).is_file():
        cfg = read_json(run_dir / CONFIG_FILE, "run config")
    export = export or {}
    out = {"run_dir": str(run_dir.resolve()), "experiment": export.get("experiment") or cfg.get("name"),
           "config_hash": export.get("config_hash"), "wandb_run_id": None, "wandb_project": None,
           "wandb_run_path": None}
    if out["config_hash"] is None and cfg:
        try:
            out["config_hash"] = ExperimentConfig.from_dict(cfg, str(run_dir / CONFIG_FILE)).hash()
        except Exception:  # noqa: BLE001 - the hash is a convenience, the folder still names the run
            pass
    out.update(_wandb_run_of(run_dir))
    return out


def _wandb_run_of(run_dir: Path) -> dict:
    """The training's W&B run: RUN/wandb/wandb_run.json, else the newest RUN/wandb/wandb/*run-*-<id> folder."""
    rec = run_dir / WANDB_DIR / WANDB_RUN_FILE
    if rec.is_file():
        try:
            d = read_json(rec, "W&B training run record")
            if isinstance(d, dict) and d.get("id"):
                return {"wandb_run_id": str(d["id"]), "wandb_project": d.get("project"),
                        "wandb_run_path": d.get("path")}
        except UserError:
            pass
    folders = sorted((p for p in (run_dir / WANDB_DIR / "wandb").glob("*run-*-*") if p.is_dir()),
                     key=lambda p: p.name.split("run-", 1)[1])
    if folders:
        return {"wandb_run_id": folders[-1].name.rsplit("-", 1)[1], "wandb_project": PROJECT, "wandb_run_path": None}
    return {}


# ----------------------------------------------------------------------------- export
def log_export(run_dir: str | os.PathLike, onnx_dir: str | os.PathLike | None = None) -> dict | None:
    """Log ONNX_DIR's files + export.json as a model artifact naming its training run; rank 0 only.
    Returns the sidecar record written beside the files (None when nothing was logged)."""
    if not is_main_process():
        return None
    run_dir = Path(run_dir)
    onnx_dir = Path(onnx_dir) if onnx_dir is not None else run_dir / ONNX_DIR
    export = read_json(onnx_dir / EXPORT_FILE, "export metadata")
    files = [f for f in (export.get("files") or {}) if (onnx_dir / f).is_file()]
    for f in list(files):  # external tensor data travels with its graph
        if (onnx_dir / f"{f}.data").is_file() and f"{f}.data" not in files:
            files.append(f"{f}.data")
    trained = training_run(run_dir, export)
    name = _artifact_name(str(trained["experiment"] or run_dir.name))
    by = (f"W&B run {trained['wandb_run_id']}" if trained["wandb_run_id"]
          else f"run folder {trained['run_dir']}")
    desc = (f"ONNX export of {trained['experiment']} (config {trained['config_hash']}), trained by {by}; "
            f"files: {', '.join(files)}")
    export_sha = _sha256(onnx_dir / EXPORT_FILE)
    alias = f"export-{export_sha[:12]}"
    try:
        import wandb

        run, mode = _init(onnx_dir / WANDB_DIR, "export", f"export-{trained['experiment']}",
                          {"training_run": trained, "export_json_sha256": export_sha})
        art = wandb.Artifact(name, type="model", description=desc,
                             metadata={"training_run": trained, "export": export})
        for f in [*files, EXPORT_FILE]:
            art.add_file(str(onnx_dir / f), name=f)
        run.log_artifact(art, aliases=["latest", alias])
        record = {"name": name, "type": "model", "project": PROJECT, "alias": alias, "digest": art.digest,
                  "export_json_sha256": export_sha, "export_run_id": run.id, "mode": mode,
                  "training_run": trained}
        run.finish()
    except Exception as e:  # noqa: BLE001 - never take the export down
        _warn("the ONNX artifact", e)
        return None
    atomic_write_json(onnx_dir / WANDB_ARTIFACT_FILE, record)
    print(f"W&B ({mode}): ONNX artifact {name}:{alias} from {by}", flush=True)
    return record


def artifact_of(run_dir: str | os.PathLike) -> dict | None:
    """The artifact record of RUN/onnx when it still describes the files there (export.json unchanged)."""
    onnx_dir = Path(run_dir) / ONNX_DIR
    side, export = onnx_dir / WANDB_ARTIFACT_FILE, onnx_dir / EXPORT_FILE
    if not (side.is_file() and export.is_file()):
        return None
    try:
        rec = read_json(side, "W&B artifact record")
    except UserError:
        return None
    if not isinstance(rec, dict) or rec.get("export_json_sha256") != _sha256(export):
        return None  # a later export replaced the files: the artifact is not theirs
    return rec


# ----------------------------------------------------------------------------- bench
COLUMNS = ["experiment", "run", "backend", "precision", "scenario", "batch_size", "samples_per_s",
           "samples_per_s_lo", "samples_per_s_hi"] + [f"{p}_ms{s}" for p in bf.LATENCY for s in ("", "_lo", "_hi")] \
          + ["accuracy_metric", "accuracy", "accuracy_count", "accuracy_pass", "stable", "unstable_reasons", "loadgen_valid",
             "ci_coverage", "bound_met"]


def table_rows(doc: dict) -> list[list]:
    """One row per whole-job record, in COLUMNS order (intervals None in schema v1)."""
    rows = []
    for r in bf.whole_job(doc):
        speed = []
        for m in ("samples_per_s", *bf.LATENCY):
            ci = bf.interval(r, m) or (None, None)
            speed += [bf.value(r, m), *ci]
        acc = bf.accuracy(r, doc)
        stable, reasons = bf.stability(r)
        rows.append([bf.experiment(r), str(r.get("run") or ""), bf.backend(r), str(r.get("precision") or ""),
                     str(r.get("scenario") or ""), r.get("batch_size"), *speed, acc["metric"], acc["value"],
                     acc["count"], acc["pass"], stable, "; ".join(reasons), bf.loadgen_valid(r),
                     bf.coverage(r), r.get("bound_met")])
    return rows


def _best(rows: list[list], scenario: str, col: str, pick) -> list[list]:
    """[label, value] per (experiment, backend): pick(values) of column col over scenario's rows."""
    i, out = COLUMNS.index(col), {}
    for row in rows:
        if row[4] == scenario and row[i] is not None:
            out.setdefault(f"{row[0]} / {row[2]}", []).append(row[i])
    return [[k, pick(v)] for k, v in sorted(out.items())]


def log_bench(bench_path: str | os.PathLike, run_dirs=()) -> str | None:
    """Log bench.json as a W&B run (table, charts, env, used artifacts); rank 0 only. Returns the run id."""
    if not is_main_process():
        return None
    bench_path = Path(bench_path)
    doc = bf.load(bench_path)
    used = [a for a in (artifact_of(d) for d in run_dirs) if a]
    config = {"env": bf.env(doc), "bench_config": doc.get("config"), "peak": doc.get("peak"),
              "skipped": doc.get("skipped"), "schema_version": bf.version(doc),
              "onnx_artifacts": [{k: a.get(k) for k in ("name", "alias", "digest", "training_run")} for a in used]}
    try:
        import wandb

        commit = str(bf.env(doc).get("git_commit") or "")[:10]
        run, mode = _init(bench_path.parent / WANDB_DIR, "bench", f"bench-{commit or bench_path.stem}", config)
        for a in used:
            _use(run, mode, a)
        rows = table_rows(doc)
        table = wandb.Table(columns=COLUMNS, data=rows)
        thr = wandb.Table(columns=["backend", "samples_per_s"], data=_best(rows, "offline", "samples_per_s", max))
        p50 = wandb.Table(columns=["backend", "p50_ms"], data=_best(rows, "single-stream", "p50_ms", min))
        run.log({"bench/results": table,
                 "bench/throughput": wandb.plot.bar(thr, "backend", "samples_per_s",
                                                    title="best offline throughput (samples/s) per backend"),
                 "bench/p50_latency": wandb.plot.bar(p50, "backend", "p50_ms",
                                                     title="single-stream p50 latency (ms) per backend")})
        run_id = run.id
        run.finish()
    except Exception as e:  # noqa: BLE001 - never take the bench down: bench.json is written
        _warn("the bench results", e)
        return None
    print(f"W&B ({mode}): bench run {run_id}, {len(rows)} rows, {len(used)} ONNX artifact(s) used", flush=True)
    return run_id


def _use(run, mode: str, art: dict) -> None:
    """Online: mark the export's artifact as this run's input. Offline W&B cannot (use_artifact needs
    the server); the link stays in the config's onnx_artifacts."""
    if mode not in ("online", "run"):
        return
    try:
        run.use_artifact(f"{art.get('project') or PROJECT}/{art['name']}:{art['alias']}", type="model")
    except Exception as e:  # noqa: BLE001 - e.g. an offline export not synced yet
        _warn(f"the use of artifact {art.get('name')}", e)


# ----------------------------------------------------------------------------- CLI glue
def after_export(a) -> None:
    """`segvae export ... --log-with wandb`: called last by harness.cli._export."""
    if getattr(a, "log_with", "none") == "wandb":
        log_export(a.run_dir, a.out)


def after_bench(a) -> None:
    """`segvae bench ... --log-with wandb`: called last by harness.cli._bench."""
    if getattr(a, "log_with", "none") == "wandb":
        log_bench(a.out, a.run_dirs)
