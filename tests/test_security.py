"""Never execute what a file carries; never leak credentials; never write outside the chosen folder.

- planted malicious pickles (unpickling one would create a marker file) where weights, checkpoint
  state or judge weights are expected: no command executes them, each fails naming the file;
- a static scan of the package sources for unpickling / eval / unsafe loaders;
- a fake WANDB_API_KEY never reaches any output file (json, safetensors, onnx, html/md, wandb files)
  nor the commands' output, and W&B gets cfg.to_dict() as its config and nothing else;
- paths from ONNX metadata and config names never steer writes outside the output folder;
- config files are parsed as JSON data, never evaluated.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_UNET, cli, wandb_records

EXPERIMENT = "unet-mp-tr-bce"
TINY = [*TINY_UNET[2:], "--epochs", "1"]  # TINY_UNET without its "--epochs 2"


# ----------------------------------------------------------------------------- the payload
class Boom:
    """Unpickling this calls pathlib.Path(marker).touch(): only pathlib is needed to load it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def boom_pickle(marker) -> bytes:
    return pickle.dumps(Boom(marker))


def boom_torch(marker) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"state": Boom(marker)}, buf)
    return buf.getvalue()


def test_payloads_are_live(tmp_path):
    """Guard against a vacuous test: the planted files really do execute code when unpickled."""
    import io

    import torch

    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    pickle.loads(boom_pickle(m1))
    torch.load(io.BytesIO(boom_torch(m2)), weights_only=False)
    assert m1.exists() and m2.exists()


def assert_refused(p: subprocess.CompletedProcess, marker: Path, named: Path):
    out = p.stdout + p.stderr
    assert not marker.exists(), f"the planted pickle was executed:\n{out[-3000:]}"
    assert p.returncode == 2, f"exit {p.returncode}, expected 2:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert str(named) in p.stderr or named.name in p.stderr, f"stderr does not name {named}:\n{p.stderr[-2000:]}"


def cli_here(capsys, *args) -> subprocess.CompletedProcess:
    """`segvae ARGS` in this process (saves an interpreter start); exit code, stdout and stderr as cli() gives."""
    from harness.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, cap.out, cap.err)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("wandb", "onnx"))
    return dst


# ----------------------------------------------------------------------------- one tiny pipeline
@pytest.fixture(scope="module")
def pipeline(data_root, tmp_path_factory):
    """train (W&B offline, fake key) -> export + bench (concurrently) -> report, all under one folder."""
    secret = f"fake-key-{uuid.uuid4().hex}"
    root = tmp_path_factory.mktemp("secure")
    runs = root / "runs"
    run = runs / "r1"
    env = {"WANDB_API_KEY": secret, "WANDB_MODE": "offline"}
    logs = [cli("train", EXPERIMENT, *TINY, "--data-root", data_root, "--out", run, "--log-with", "wandb", env=env)]
    benv = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **env}
    bench = subprocess.Popen(
        [sys.executable, "-m", "harness", "bench", str(run), "--backends", "torch-eager", "--min-duration", "0.05",
         "--min-queries", "2", "--batch-sizes", "1", "--rounds", "3", "--data-root", str(data_root),
         "--out", str(root / "bench.json")],
        cwd=REPO, env=benv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs.append(cli("export", run, "--data-root", data_root, env=env))
    out, err = bench.communicate(timeout=600)
    logs.append(subprocess.CompletedProcess(bench.args, bench.returncode, out, err))
    assert bench.returncode == 0, f"bench failed:\n{out[-2000:]}\n{err[-2000:]}"
    shutil.copy(root / "bench.json", runs / "bench.json")  # so the report includes it
    logs.append(cli("report", runs, "--out", root / "report", env=env))
    return {"root": root, "run": run, "runs": runs, "secret": secret, "logs": logs, "bench": bench is not None}


# ----------------------------------------------------------------------------- 1. planted pickles
def test_export_refuses_pickled_weights(pipeline, tmp_path, capsys):
    run = copy_run(pipeline["run"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    (run / "model.safetensors").write_bytes(boom_pickle(marker))
    p = cli_here(capsys, "export", run, "--out", tmp_path / "onnx")
    assert_refused(p, marker, run / "model.safetensors")
    assert "not a safetensors" in p.stderr
    assert not (tmp_path / "onnx").exists()


def test_bench_refuses_pickled_weights(pipeline, tmp_path, capsys):
    run = copy_run(pipeline["run"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    (run / "model.safetensors").write_bytes(boom_torch(marker))
    p = cli_here(capsys, "bench", run, "--backends", "torch-eager", "--min-duration", "0.05", "--min-queries", "2",
                 "--batch-sizes", "1", "--out", tmp_path / "bench.json")
    assert_refused(p, marker, run / "model.safetensors")
    assert not (tmp_path / "bench.json").exists()


def test_report_never_reads_weights_or_pickles(pipeline, tmp_path):
    """report reads JSON only: pickled weights are ignored, a pickled metrics.json is skipped with its name."""
    from harness.report import build_report

    runs = tmp_path / "runs"
    copy_run(pipeline["run"], runs / "a")
    b = copy_run(pipeline["run"], runs / "b")
    marker = tmp_path / "MARKER"
    (runs / "a" / "model.safetensors").write_bytes(boom_pickle(marker))
    (runs / "a" / "best.safetensors").write_bytes(boom_torch(marker))
    (b / "metrics.json").write_bytes(boom_pickle(marker))
    (runs / "bench.json").write_bytes(boom_torch(marker))
    paths = build_report(runs, out_dir=tmp_path / "report")
    assert not marker.exists()
    md = paths["md"].read_text()
    assert "skipped run b" in md and "metrics.json" in md and "not valid JSON" in md
    assert "bench.json" in md


def test_resume_refuses_pickled_optimizer_state(pipeline, data_root, tmp_path):
    run = copy_run(pipeline["run"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    bad = run / "checkpoints" / "last" / "optimizer.bin"
    assert bad.is_file(), "training no longer writes optimizer.bin: update this test"
    bad.write_bytes(boom_torch(marker))
    p = cli("train", EXPERIMENT, *TINY, "--epochs", "2", "--data-root", data_root, "--out", run, "--resume",
            check=False)
    assert_refused(p, marker, bad)


def test_resume_refuses_pickled_random_states(pipeline, tmp_path):
    """Same check as above on random_states_0.pkl, through the function the resume path calls."""
    from harness.errors import UserError
    from harness.train_checkpoints import verify_checkpoint

    ckpt = copy_run(pipeline["run"] / "checkpoints" / "last", tmp_path / "last")
    verify_checkpoint(ckpt)  # the genuine checkpoint loads with weights_only=True
    marker = tmp_path / "MARKER"
    bad = ckpt / "random_states_0.pkl"
    assert bad.is_file()
    for payload in (boom_torch(marker), boom_pickle(marker)):
        bad.write_bytes(payload)
        with pytest.raises(UserError, match=re.escape(str(bad))):
            verify_checkpoint(ckpt)
        assert not marker.exists()


def test_resume_names_a_bad_checkpoint_safetensors(pipeline, tmp_path):
    from harness.errors import UserError
    from harness.train_checkpoints import verify_checkpoint

    ckpt = copy_run(pipeline["run"] / "checkpoints" / "last", tmp_path / "last")
    marker = tmp_path / "MARKER"
    bad = ckpt / "model.safetensors"
    bad.write_bytes(boom_pickle(marker))
    try:
        with pytest.raises(UserError, match=re.escape(str(bad))):
            verify_checkpoint(ckpt)
    finally:
        assert not marker.exists()


def test_judge_refuses_pickled_weights(tmp_path):
    from harness.errors import UserError
    from harness.judge import RECIPES, load_judge
    from harness.run_folder import JUDGE_FILE as META_FILE, JUDGE_WEIGHTS_FILE as WEIGHTS_FILE

    d = tmp_path / "judges" / "mnist"
    d.mkdir(parents=True)
    (d / META_FILE).write_text(json.dumps({"dataset": "mnist", "arch": RECIPES["mnist"]["arch"]}))
    marker = tmp_path / "MARKER"
    for payload in (boom_torch(marker), boom_pickle(marker)):
        (d / WEIGHTS_FILE).write_bytes(payload)
        with pytest.raises(UserError, match=re.escape(str(d / WEIGHTS_FILE))):
            load_judge(d)
        assert not marker.exists()


# ----------------------------------------------------------------------------- 2. static scan
PACKAGES = ("harness", "models", "exports")
FORBIDDEN = {
    "pickle load": re.compile(r"\b(c?pickle|dill|cloudpickle|joblib|marshal|shelve)\.(load|loads|open|Unpickler)\b"),
    "torch.load": re.compile(r"\btorch\.load\("),
    "weights_only=False": re.compile(r"weights_only['\"]?\s*[=:]\s*False"),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\("),
    "unsafe yaml": re.compile(r"\byaml\.(load|load_all|unsafe_load|full_load)\((?!.*SafeLoader)"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "np.load without allow_pickle=False": re.compile(r"\b(np|numpy)\.load\((?!.*allow_pickle\s*=\s*False)"),
    "load_state without weights_only": re.compile(r"\.load_state\((?!.*weights_only['\"]?\s*:\s*True)"),
}
# (file, rule) -> why it is acceptable
ALLOWED: dict[tuple[str, str], str] = {}


def _scan() -> list[tuple[str, int, str, str]]:
    hits = []
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                for rule, rx in FORBIDDEN.items():
                    if rx.search(code):
                        hits.append((rel, i, rule, line.strip()))
    return hits


def test_static_no_unpickling_or_eval_in_sources():
    bad = [h for h in _scan() if (h[0], h[2]) not in ALLOWED]
    assert not bad, "unsafe loading in the package sources:\n" + "\n".join(f"{f}:{i}: [{r}] {s}" for f, i, r, s in bad)


def test_static_scanner_catches_what_it_should():
    samples = ["x = pickle.load(f)", "torch.load(p)", "torch.load(p, weights_only=False)", "eval(s)",
               "exec(code)", "yaml.load(f)", "np.load(p)", "np.load(p, allow_pickle=True)",
               "acc.load_state(d)"]
    for s in samples:
        assert any(rx.search(s) for rx in FORBIDDEN.values()), s
    for s in ["model.eval()", "yaml.safe_load(f)", "np.load(p, allow_pickle=False)", "json.loads(s)",
              'acc.load_state(d, load_kwargs={"weights_only": True})']:
        assert not any(rx.search(s) for rx in FORBIDDEN.values()), s


# ----------------------------------------------------------------------------- 3. secrets
def test_secret_never_reaches_any_output(pipeline):
    secret = pipeline["secret"].encode()
    files = [p for p in pipeline["root"].rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".json", ".safetensors", ".onnx", ".html", ".md", ".wandb"} <= kinds, kinds
    leaks = [str(p) for p in files if secret in p.read_bytes()]
    assert not leaks, f"WANDB_API_KEY found in {leaks}"
    for p in pipeline["logs"]:
        assert pipeline["secret"] not in p.stdout + p.stderr, p.args
    import onnx

    for f in pipeline["run"].rglob("*.onnx"):
        meta = {m.key: m.value for m in onnx.load(str(f), load_external_data=False).metadata_props}
        assert meta and not any(pipeline["secret"] in v or "WANDB" in k.upper() for k, v in meta.items())


def test_wandb_config_is_the_experiment_config_only(pipeline):
    cfg = json.loads((pipeline["run"] / "config.json").read_text())
    runs = list((pipeline["run"] / "wandb").rglob("*.wandb"))
    assert len(runs) == 1, runs
    logged: dict[str, str] = {}
    for r in wandb_records(runs[0]):
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        logged.update({i.key: i.value_json for i in items if not i.key.startswith("_wandb")})
    assert set(logged) == set(cfg), set(logged) ^ set(cfg)
    assert {k: json.loads(v) for k, v in logged.items()} == cfg


# ----------------------------------------------------------------------------- 4. paths from files
def _listing(root: Path, skip: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if skip != p and skip not in p.parents}


def test_predict_ignores_paths_in_onnx_metadata(pipeline, tmp_path):
    import onnx
    from PIL import Image

    from exports.predict import predict

    work = tmp_path / "work"
    out = work / "a" / "b" / "out"
    (work / "imgs").mkdir(parents=True)
    absolute = tmp_path / "abs-evil"
    model = onnx.load(str(pipeline["run"] / "onnx" / "model.onnx"))
    evil = {"experiment": "../../evil", "name": "../../evil", "out_dir": str(absolute), "output": "../../../evil.png",
            "stem": "/tmp/evil", "dataset": "../evil", "config_hash": "../../evil", "variant": '{"task": "../../x"}'}
    kept = [m for m in model.metadata_props if m.key not in evil]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in evil.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(work / "evil.onnx"))
    Image.new("RGB", (40, 30), (200, 120, 40)).save(work / "imgs" / "cat.png")
    Image.new("RGB", (20, 20), (20, 20, 40)).save(work / "imgs" / "dog.jpg")
    before = _listing(tmp_path, out)
    written = predict(work / "evil.onnx", [work / "imgs"], out, threads=1)
    assert _listing(tmp_path, out) == before | {"work/a", "work/a/b"}
    assert not absolute.exists() and not Path("/tmp/evil").exists()
    assert sorted(p.name for p in out.iterdir()) == ["cat_mask.png", "cat_overlay.png", "dog_mask.png",
                                                     "dog_overlay.png"]
    assert all(p.parent == out for p in written)


def test_config_name_with_path_is_refused(pipeline, tmp_path):
    from harness.config import ExperimentConfig, get_experiment
    from harness.errors import UserError
    from harness.export_stage import export_run

    for name in ("../../evil", "/abs/evil", "a/b", "..", ".", ""):
        with pytest.raises(UserError, match="name"):
            get_experiment(EXPERIMENT).replace(name=name).validate()
    run = copy_run(pipeline["run"], tmp_path / "nest" / "run")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "name": "../../evil"}))
    before = _listing(tmp_path, run)
    with pytest.raises(UserError, match=r"name='\.\./\.\./evil'"):
        export_run(run, out_dir=run / "onnx")
    with pytest.raises(UserError, match="name"):
        ExperimentConfig.from_dict({**cfg, "name": "../../evil"})
    assert _listing(tmp_path, run) == before and not (run / "onnx").exists()


def test_report_with_path_names_stays_inside(pipeline, tmp_path):
    from harness.report import build_report

    runs = tmp_path / "x" / "runs"
    run = copy_run(pipeline["run"], runs / "r")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "name": "../../evil"}))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["samples"] = {"overlays": "../../../../etc/passwd", "grid": str(tmp_path / "abs.png")}
    (run / "metrics.json").write_text(json.dumps({**metrics, "experiment": "/tmp/evil"}))
    out = runs / "report"
    before = _listing(tmp_path, out)
    paths = build_report(runs, out_dir=out)
    assert _listing(tmp_path, out) == before
    assert {p.name for p in out.iterdir()} == {"report.html", "report.md", "report_assets"}
    assert all(p.parent == out / "report_assets" and "/" not in p.name for p in (out / "report_assets").iterdir())
    assert "outside" in paths["md"].read_text()  # the escaping image path was refused with a warning


# ----------------------------------------------------------------------------- 5. configs are data
def test_config_with_python_expression_is_not_evaluated(tmp_path, capsys):
    from harness.cli import main
    from harness.errors import UserError
    from harness.io import read_json

    marker = tmp_path / "MARKER"
    cfg = tmp_path / "config.json"
    cfg.write_text(f"__import__('pathlib').Path({str(marker)!r}).touch() or {{'name': 'unet-mp-tr-bce'}}")
    with pytest.raises(UserError, match=re.escape(str(cfg)) + ".*not valid JSON"):
        read_json(cfg, "run config")
    assert main(["train", EXPERIMENT, "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "not valid JSON" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "run").exists()
