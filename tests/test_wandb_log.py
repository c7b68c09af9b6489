"""W&B for export and bench, read back from the offline run folders with wandb's own protobufs:
the bench table and charts, the model artifact naming its training run, the lineage in between."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import wandb_log
from harness.errors import UserError
from harness.run_folder import WANDB_ARTIFACT_FILE
from tests.fixtures import bench_v1, bench_v2
from tests.helpers import TINY_UNET, cli, wandb_records


def offline_run(wandb_dir: Path) -> tuple[Path, list]:
    """The one offline run folder under wandb_dir (wandb adds a wandb/ level) and its records, read
    once the file is complete: wandb's service may still be flushing it when finish() returns."""
    folders = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, folders
    path = next(folders[0].glob("run-*.wandb"))
    deadline = time.monotonic() + 60
    while True:
        try:
            records = list(wandb_records(path))
        except Exception:  # noqa: BLE001 - a chunk half written: read again
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return folders[0], records
        time.sleep(0.2)


def of_type(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def run_config(records) -> dict:
    """The run's config: the run record's, then later config updates (nested keys as nested dicts)."""
    cfg: dict = {}
    for c in [r.config for r in of_type(records, "run")] + of_type(records, "config"):
        for u in c.update:
            keys = [u.key] if u.key else list(u.nested_key)
            d = cfg
            for k in keys[:-1]:
                d = d.setdefault(k, {})
            d[keys[-1]] = json.loads(u.value_json)
    return cfg


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """W&B offline with every cache/config/staging folder inside tmp_path, single process."""
    for var, sub in (("WANDB_DATA_DIR", "wdata"), ("WANDB_CACHE_DIR", "wcache"), ("WANDB_CONFIG_DIR", "wconf")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("RANK", raising=False)
    return tmp_path


def _trained_run(root: Path) -> tuple[Path, str]:
    """A run folder with config.json, a real offline W&B training run (as Accelerate starts it, but
    without wandb_run.json: the folder-name fallback) and an ONNX folder with export.json."""
    import wandb

    from harness.run_folder import save_config
    from harness.config import get_experiment

    cfg = get_experiment("unet-mp-tr-bce").with_base_channels(4)
    run_dir = root / "unet-run"
    save_config(run_dir, cfg)
    (run_dir / "wandb").mkdir(parents=True)
    run = wandb.init(project=wandb_log.PROJECT, dir=str(run_dir / "wandb"), name="unet-run", mode="offline")
    run_id = run.id
    run.finish()
    onnx = run_dir / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"graph" * 100)
    (onnx / "model.int8.onnx").write_bytes(b"int8" * 50)
    (onnx / "export.json").write_text(json.dumps({
        "experiment": cfg.name, "config_hash": cfg.hash(), "task": "segmentation", "opset": 18,
        "files": {"model.onnx": {"precision": "fp32", "bytes": 500}, "model.int8.onnx": {"precision": "int8", "bytes": 200}}}))
    return run_dir, run_id


def test_export_artifact_names_its_training_run_and_bench_logs_table(offline_env):
    run_dir, train_id = _trained_run(offline_env)
    side = wandb_log.log_export(run_dir)
    assert side == json.loads((run_dir / "onnx" / WANDB_ARTIFACT_FILE).read_text())
    folder, recs = offline_run(run_dir / "onnx" / "wandb")
    arts = of_type(recs, "artifact")
    model = [a for a in arts if a.type == "model"]
    assert len(model) == 1 and model[0].name == "unet-mp-tr-bce-onnx"
    meta = json.loads(model[0].metadata)
    assert meta["training_run"]["wandb_run_id"] == train_id
    assert meta["training_run"]["config_hash"] == json.loads((run_dir / "onnx" / "export.json").read_text())["config_hash"]
    assert meta["export"]["files"]["model.onnx"]["bytes"] == 500
    assert train_id in model[0].description and "config " in model[0].description
    sizes = {c.path: c.size for c in model[0].manifest.contents}
    assert sizes == {"model.onnx": 500, "model.int8.onnx": 200,
                     "export.json": (run_dir / "onnx" / "export.json").stat().st_size}
    assert side["training_run"]["wandb_run_id"] == train_id and side["digest"] == model[0].digest

    bench = offline_env / "out" / "bench.json"
    bench.parent.mkdir()
    bench.write_text(json.dumps(bench_v2()))
    run_id = wandb_log.log_bench(bench, [run_dir])
    folder, recs = offline_run(bench.parent / "wandb")
    assert folder.name.endswith(run_id)
    tables = list((folder / "files" / "media" / "table" / "bench").glob("results_*.table.json"))
    assert len(tables) == 1
    t = json.loads(tables[0].read_text())
    assert t["columns"] == wandb_log.COLUMNS
    rows = [dict(zip(t["columns"], r)) for r in t["data"]]
    assert len(rows) == len(bench_v2()["results"]) - 1  # the per-rank record is left out
    int8 = next(r for r in rows if r["backend"] == "ort-int8" and r["scenario"] == "offline" and r["batch_size"] == 8)
    assert (int8["samples_per_s"], int8["samples_per_s_lo"], int8["samples_per_s_hi"]) == (160.0, 156.8, 163.2)
    assert int8["accuracy"] == 0.7984 and int8["accuracy_count"] == 238 and int8["accuracy_pass"] is True
    assert int8["stable"] is True and int8["loadgen_valid"] is False and int8["p50_ms"] == pytest.approx(1000 * 8 / 160)
    cfg = run_config(recs)
    assert "env" in cfg, (sorted(cfg), [r.WhichOneof("record_type") for r in recs])
    assert cfg["env"] == bench_v2()["env"] and cfg["schema_version"] == 2
    assert [a["name"] for a in cfg["onnx_artifacts"]] == ["unet-mp-tr-bce-onnx"]
    assert cfg["onnx_artifacts"][0]["training_run"]["wandb_run_id"] == train_id  # training -> ONNX -> bench
    charts = run_config(recs)["_wandb"]["visualize"]
    assert {"bench/throughput", "bench/p50_latency"} <= set(charts)


def test_bench_v1_rows_and_stale_sidecar(offline_env):
    rows = wandb_log.table_rows(bench_v1())
    assert len(rows) == len(bench_v1()["results"]) - 1
    r = dict(zip(wandb_log.COLUMNS, rows[0]))
    assert r["samples_per_s_lo"] is None and r["accuracy"] == 0.8012 and r["accuracy_count"] == 238
    run_dir, _ = _trained_run(offline_env)
    wandb_log.log_export(run_dir)
    assert wandb_log.artifact_of(run_dir)["name"] == "unet-mp-tr-bce-onnx"
    (run_dir / "onnx" / "export.json").write_text("{}")  # a later export: the artifact no longer describes it
    assert wandb_log.artifact_of(run_dir) is None


def test_only_rank_zero_logs(offline_env, monkeypatch):
    bench = offline_env / "bench.json"
    bench.write_text(json.dumps(bench_v2()))
    monkeypatch.setenv("RANK", "1")
    assert wandb_log.log_bench(bench) is None and wandb_log.log_export(offline_env / "nope") is None
    assert not (offline_env / "wandb").exists()


def test_logged_in_via_netrc_goes_online(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SILENT", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not wandb_log.logged_in()
    assert wandb_log.default_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0123456789abcdef" * 2 + "01234567\n")
    netrc.chmod(0o600)
    assert wandb_log.logged_in()        # what `wandb login` writes
    assert wandb_log.default_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # an explicit choice wins
    assert wandb_log.default_mode() == "offline"


def test_tensorboard_missing_is_a_user_error(tmp_path, monkeypatch):
    import importlib.util

    from harness.trackers import check_tracker

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(UserError, match="pip install tensorboard"):
        check_tracker("tensorboard")


def test_log_with_wandb_needs_wandb(monkeypatch, capsys):
    import importlib.util

    from harness.cli import build_parser

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "runs/x", "--log-with", "wandb"])
    assert e.value.code == 2 and "pip install" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_lineage_training_to_onnx_to_bench(data_root, tmp_path):
    """The real commands: train --log-with wandb, export --log-with wandb, bench --log-with wandb."""
    env = {"WANDB_DATA_DIR": str(tmp_path / "wdata"), "WANDB_CACHE_DIR": str(tmp_path / "wcache"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wconf"), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    cli("train", "unet-mp-tr-bce", *TINY_UNET, "--epochs", "1", "--data-root", data_root, "--out", run,
        "--log-with", "wandb", env=env)
    train_id = json.loads((run / "wandb" / "wandb_run.json").read_text())["id"]
    assert offline_run(run / "wandb")[0].name.endswith(train_id)
    p = cli("export", run, "--data-root", data_root, "--log-with", "wandb", env=env)
    assert f"from W&B run {train_id}" in p.stdout
    art = next(a for a in of_type(offline_run(run / "onnx" / "wandb")[1], "artifact") if a.type == "model")
    assert json.loads(art.metadata)["training_run"]["wandb_run_id"] == train_id
    cli("bench", run, "--data-root", data_root, "--backends", "ort-fp32", "--scenarios", "single-stream",
        "--batch-sizes", "1", "--min-duration", "0.05", "--min-queries", "2", "--accuracy-samples", "4", "--rounds", "3",
        "--out", tmp_path / "b" / "bench.json", "--log-with", "wandb", env=env)
    folder, recs = offline_run(tmp_path / "b" / "wandb")
    cfg = run_config(recs)
    assert cfg["onnx_artifacts"][0]["digest"] == art.digest
    assert cfg["onnx_artifacts"][0]["training_run"]["wandb_run_id"] == train_id
    table = json.loads(next((folder / "files" / "media" / "table" / "bench").glob("results_*.table.json")).read_text())
    assert [r[2] for r in table["data"]] == ["ort-fp32"]
