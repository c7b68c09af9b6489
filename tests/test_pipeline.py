"""`segvae run` presets: which configs and seeds each task gets (no training here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config import get_experiment
from harness.errors import UserError
from harness.presets import PRESETS, preset_config, task_seeds
from harness.run_folder import run_dir_name


def test_cpu_preset_seeds_per_task_and_override():
    p = PRESETS["cpu"]
    assert task_seeds(p, "segmentation", None) == (0, 1, 2)
    assert task_seeds(p, "cvae", None) == (0,)
    assert task_seeds(p, "cvae", (5, 6)) == task_seeds(p, "segmentation", (5, 6)) == (5, 6)
    assert task_seeds(PRESETS["quick"], "cvae", None) == PRESETS["quick"].seeds  # default: the same seeds
    assert run_dir_name("unet-mp-tr-bce", 1, (0, 1, 2)) == "unet-mp-tr-bce-s1"
    assert run_dir_name("cvae-mnist", 0, (0,)) == "cvae-mnist"


def test_preset_configs_apply_overrides_on_the_registry():
    unet = preset_config("unet-sc-up-dice", PRESETS["cpu"], seed=2)
    base = get_experiment("unet-sc-up-dice")
    assert unet.mixed_precision == "auto" and unet.seed == 2  # bf16 only where the CPU computes it natively
    for name, p in PRESETS.items():  # none forces a precision the machine at hand might only emulate
        for overrides in (p.segmentation, p.cvae, *p.cvae_by_dataset.values()):
            assert overrides.get("mixed_precision", "auto") in ("auto", "no"), (name, overrides)
    assert (unet.epochs, unet.batch_size, unet.model.base_channels) == (base.epochs, base.batch_size,
                                                                         base.model.base_channels)
    cvae = preset_config("cvae-mnist", PRESETS["cpu"], seed=0)
    assert cvae.kl_weight == 8.0 and cvae.early_stop_patience is None
    assert preset_config("cvae-cifar10", PRESETS["gpu"], seed=0).kl_weight == 4.0
    # the registry holds the published recipe, swap KL weights included: `segvae train` uses them too
    assert get_experiment("cvae-mnist").kl_weight == 8.0 and get_experiment("cvae-cifar10").kl_weight == 4.0
    quick = preset_config("cvae-cifar10", PRESETS["quick"], seed=0)
    assert quick.epochs == 20 and quick.model.hidden_channels == PRESETS["quick"].cvae_channels


def test_unknown_preset_is_a_clear_error(tmp_path):
    from harness.pipeline import run_pipeline

    with pytest.raises(UserError, match="unknown --preset 'fast'.*quick"):
        run_pipeline(preset="fast", out_dir=tmp_path)


# ----------------------------------------------------------------------------- reusing finished runs
class _StopAfterTraining(Exception):
    pass


def _fake_run(run, cfg, finished: bool, drop_field: str | None = None):
    """A run directory as `segvae train` leaves it: config.json, and when finished weights + metrics."""
    import json

    run.mkdir(parents=True)
    d = cfg.to_dict()
    if drop_field:
        d.pop(drop_field)  # a config.json written before this field existed
    (run / "config.json").write_text(json.dumps(d))
    if finished:
        (run / "model.safetensors").write_bytes(b"w")
        (run / "metrics.json").write_text("{}")


def test_run_state_tells_finished_interrupted_and_foreign_runs(tmp_path):
    from harness.pipeline import run_state

    cfg = preset_config("unet-mp-tr-bce", PRESETS["cpu"], seed=0)
    assert run_state(tmp_path / "missing", cfg) == "none"
    _fake_run(tmp_path / "done", cfg, finished=True, drop_field="compile")
    assert run_state(tmp_path / "done", cfg) == "finished"  # an absent field takes its default
    assert run_state(tmp_path / "done", cfg.replace(epochs=cfg.epochs + 1)) == "other"
    _fake_run(tmp_path / "half", cfg, finished=False)
    assert run_state(tmp_path / "half", cfg) == "same"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert run_state(tmp_path / "bad", cfg) == "other"


@pytest.mark.parametrize("retrain", [False, True])
def test_pipeline_reuses_finished_runs_resumes_others_and_retrains_on_request(tmp_path, data_root, monkeypatch,
                                                                             retrain):
    import harness.launchers.local as local
    import harness.pipeline as pipeline

    calls = []

    def child(argv, tag):
        if argv[3] != "train":
            raise _StopAfterTraining
        calls.append(argv[3:])

    monkeypatch.setattr(local, "run_child", child)
    p = PRESETS["quick"]
    names = ["unet-mp-tr-bce", "unet-sc-tr-bce", "unet-sc-up-dice"]
    cfgs = {n: preset_config(n, p, 0) for n in names}
    _fake_run(tmp_path / "unet-mp-tr-bce", cfgs["unet-mp-tr-bce"], finished=True)    # finished
    _fake_run(tmp_path / "unet-sc-tr-bce", cfgs["unet-sc-tr-bce"], finished=False)    # interrupted
    _fake_run(tmp_path / "unet-sc-up-dice", cfgs["unet-sc-up-dice"].replace(epochs=1), finished=True)  # stale
    with pytest.raises(_StopAfterTraining):
        pipeline.run_pipeline("quick", data_root=data_root, experiments=names, out_dir=tmp_path, retrain=retrain)

    trained = {argv[1]: argv for argv in calls}
    if retrain:
        assert set(trained) == set(names) and not any("--resume" in a for a in calls)
        assert not (tmp_path / "unet-mp-tr-bce" / "metrics.json").exists()
    else:
        assert set(trained) == {"unet-sc-tr-bce", "unet-sc-up-dice"}
        assert "--resume" in trained["unet-sc-tr-bce"] and "--resume" not in trained["unet-sc-up-dice"]
        assert (tmp_path / "unet-mp-tr-bce" / "metrics.json").exists()
    # the stale run's old results are gone before it retrains, so a crash cannot pair them with the new config
    assert not (tmp_path / "unet-sc-up-dice" / "metrics.json").exists()


def test_judge_command_reuses_a_judge_only_with_the_same_settings(tmp_path, data_root, monkeypatch):
    """`segvae judge` (the pipeline's judge stage) reuses the judge in --out when its settings (dataset,
    epochs, data root, recipe) are unchanged, retrains it when they change or its weights are gone,
    and always with --retrain."""
    import harness.judge as judge_mod
    from harness.cli import main
    from harness.judge import load_judge

    trained = []
    real_train = judge_mod.train_judge
    monkeypatch.setattr(judge_mod, "train_judge",
                        lambda ds, root, **kw: trained.append((ds, kw["epochs"])) or real_train(ds, root, threads=1, **kw))
    jdir = tmp_path / "judges" / "mnist"

    def judge(epochs, *extra):
        assert main(["judge", "mnist", "--data-root", str(data_root), "--out", str(jdir), "--epochs", str(epochs),
                     *extra]) == 0
        return load_judge(jdir)

    first = judge(1)
    assert trained == [("mnist", 1)]
    again = judge(1)
    assert trained == [("mnist", 1)]
    x = torch.rand(4, 1, 28, 28)
    np.testing.assert_array_equal(again.predict(x), first.predict(x))  # the same weights
    judge(1, "--retrain")
    judge(2)
    (jdir / "judge.safetensors").unlink()
    judge(2)
    assert trained == [("mnist", 1), ("mnist", 1), ("mnist", 2), ("mnist", 2)]


# ----------------------------------------------------------------------------- recorded commands
def test_bench_flags_are_generic_over_the_preset_dict():
    """Every key of a preset's bench dict becomes a flag, and the real parser reads back the same values."""
    from harness.cli import build_parser
    from harness.pipeline import as_flags, make_plan

    assert as_flags({"batch_sizes": [1, 8], "min_duration": 0.5, "on": True, "off": False, "unset": None}) == [
        "--batch-sizes", "1,8", "--min-duration", "0.5", "--on"]
    for name, p in PRESETS.items():
        plan = make_plan(name, None, ["unet-mp-tr-bce"], None, "out", "none", False)
        parsed = vars(build_parser().parse_args(plan.bench[3:]))
        assert {k: parsed[k] for k in p.bench} == plan.bench_settings, name
        # the preset's own list, less only what this machine emulates (harness.hardware)
        if "backends" in p.bench:
            assert sorted([*plan.bench_settings["backends"], *plan.left_out]) == sorted(p.bench["backends"])
            assert all("emulated on this machine" in why for why in plan.left_out.values())


def test_a_preset_key_without_a_flag_fails_before_any_work(tmp_path, monkeypatch):
    import harness.launchers.local as local
    import harness.pipeline as pipeline

    monkeypatch.setitem(pipeline.PRESETS, "odd", pipeline.Preset("odd", bench={"no_such_setting": 3}))
    monkeypatch.setattr(local, "run_child", lambda argv, tag: pytest.fail(f"ran {argv}"))
    with pytest.raises(UserError, match="bench .*--no-such-setting"):
        pipeline.run_pipeline("odd", out_dir=tmp_path, experiments=["unet-mp-tr-bce"])


def _rerun(command: str):
    """Run a recorded command exactly as printed (a shell line)."""
    import shlex
    import subprocess

    r = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.slow
def test_recorded_commands_reproduce_the_pipeline_artifacts(tmp_path, data_root, monkeypatch):
    """pipeline.json holds the argv each stage ran; re-running the train and export commands as
    printed gives the same config hash, metrics (timings aside) and int8 calibration: the export
    calibrates on the run's data root, not on the embedded sample."""
    import json

    import harness.pipeline as pipeline
    from tests.helpers import REPO, without_timings

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setitem(pipeline.PRESETS, "tiny", pipeline.Preset(
        "tiny", segmentation={"epochs": 1, "image_size": 32, "batch_size": 4, "mixed_precision": "no"},
        unet_channels=4, bench={"batch_sizes": [1], "min_queries": 2, "min_duration": 0.01, "warmup": 0,
                                "accuracy_samples": 4, "backends": ["torch-eager", "ort-fp32"],
                                "scenarios": ["single-stream"]}))
    out = tmp_path / "out"
    pipeline.run_pipeline("tiny", data_root=data_root, experiments=["unet-mp-tr-bce"], out_dir=out)
    doc = json.loads((out / "pipeline.json").read_text())
    stages = {argv[3]: argv for argv in doc["argv"][1:]}
    assert set(stages) == {"train", "export", "bench", "report"}
    assert doc["commands"][1:] == [__import__("shlex").join(a) for a in doc["argv"][1:]]
    assert stages["export"][stages["export"].index("--data-root") + 1] == str(data_root.absolute())
    assert "--batch-sizes" in stages["bench"] and (out / "bench.json").is_file() and (out / "report.html").is_file()
    # the estimate made here from calibration, beside the measured stage times
    assert set(doc["estimate"]["stage_seconds"]) == {"train", "judges", "export", "bench"}
    assert doc["estimate"]["stage_seconds"]["train"] > 0 and doc["stage_seconds"]["train"] > 0

    run = out / "unet-mp-tr-bce"
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["data_root"] == str(data_root.absolute()) and recorded["provenance"]["argv"][1] == "train"
    before = {f: json.loads(p.read_text()) for f, p in (("metrics", run / "metrics.json"),
                                                          ("export", run / "onnx" / "export.json"))}
    for cmd in doc["commands"][1:3]:  # train, then export, exactly as printed
        _rerun(cmd)
    after = {f: json.loads(p.read_text()) for f, p in (("metrics", run / "metrics.json"),
                                                         ("export", run / "onnx" / "export.json"))}
    assert without_timings(after["metrics"]) == without_timings(before["metrics"])
    assert after["export"]["config_hash"] == before["export"]["config_hash"]
    assert after["export"]["int8"] == before["export"]["int8"] and after["export"]["parity"] == before["export"]["parity"]


def test_a_rerun_runs_only_what_did_not_finish_and_what_reads_it(tmp_path, data_root, monkeypatch):
    """Each step's state goes to pipeline.json; a second `segvae run` re-runs only the report; after a
    training lost its result, that training (resumed), the steps reading it and the report run again,
    and the export of the other run does not."""
    import json
    import shutil
    from pathlib import Path

    import harness.launchers.local as local
    import harness.pipeline as pipeline
    from harness.estimate import Estimate

    calls = []

    def child(argv, tag):  # each stage's output, as the real command leaves it
        calls.append(tag)
        cmd, flag = argv[3], lambda name: Path(argv[argv.index(name) + 1])
        if cmd == "train":
            flag("--out").mkdir(parents=True, exist_ok=True)
            shutil.copy(flag("--config"), flag("--out") / "config.json")
            for name in ("metrics.json", "model.safetensors"):
                (flag("--out") / name).write_text("{}")
        out = {"judge": lambda: flag("--out") / "judge.json", "export": lambda: Path(argv[4]) / "onnx" / "export.json",
               "bench": lambda: flag("--out"), "report": lambda: Path(argv[4]) / "report.html"}.get(cmd)
        if out:
            out().parent.mkdir(parents=True, exist_ok=True)
            out().write_text("{}")

    monkeypatch.setattr(local, "run_child", child)
    monkeypatch.setattr(pipeline, "estimate_plan", lambda plan, retrain, costs=None: Estimate())  # not under test
    names = ["unet-mp-tr-bce", "cvae-mnist"]
    run = lambda: pipeline.run_pipeline("quick", data_root=data_root, experiments=names, out_dir=tmp_path)  # noqa: E731

    run()
    assert calls == ["[train unet-mp-tr-bce]", "[train cvae-mnist]", "[judge mnist]", "[export unet-mp-tr-bce]",
                     "[export cvae-mnist]", "[bench]", "[report]"]
    steps = json.loads((tmp_path / "pipeline.json").read_text())["steps"]
    assert {s["state"] for s in steps.values()} == {"completed"} and steps["bench"]["after"] == [
        "judge/mnist", "export/unet-mp-tr-bce", "export/cvae-mnist"]
    calls.clear()
    run()
    assert calls == ["[report]"]
    assert json.loads((tmp_path / "pipeline.json").read_text())["steps"]["judge/mnist"]["state"] == "reused"
    calls.clear()
    (tmp_path / "cvae-mnist" / "metrics.json").unlink()  # an interrupted training
    run()
    assert calls == ["[train cvae-mnist]", "[judge mnist]", "[export cvae-mnist]", "[bench]", "[report]"]
    steps = json.loads((tmp_path / "pipeline.json").read_text())["steps"]
    assert steps["train/cvae-mnist"]["argv"][-1] == "--resume"
    assert steps["export/unet-mp-tr-bce"]["state"] == "reused"
