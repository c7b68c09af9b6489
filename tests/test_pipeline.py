"""`segvae run` presets: which configs and seeds each task gets (no training here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config import get_experiment
from harness.errors import UserError
from harness.pipeline import PRESETS, SWAP_KL_WEIGHT, preset_config, run_dir_name, task_seeds


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
    assert unet.mixed_precision == "bf16" and unet.seed == 2
    assert (unet.epochs, unet.batch_size, unet.model["base_channels"]) == (base.epochs, base.batch_size,
                                                                          base.model["base_channels"])
    cvae = preset_config("cvae-mnist", PRESETS["cpu"], seed=0)
    assert cvae.kl_weight == SWAP_KL_WEIGHT["mnist"] == 8.0 and cvae.early_stop_patience is None
    assert preset_config("cvae-cifar10", PRESETS["gpu"], seed=0).kl_weight == SWAP_KL_WEIGHT["cifar10"] == 4.0
    assert get_experiment("cvae-mnist").kl_weight == 1.0  # `segvae train` keeps the plain ELBO
    quick = preset_config("cvae-cifar10", PRESETS["quick"], seed=0)
    assert quick.epochs == 20 and quick.model["hidden_channels"] == PRESETS["quick"].cvae_channels


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
    import harness.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "_child", lambda argv, tag: calls.append(argv))

    def stop(*a, **k):
        raise _StopAfterTraining

    monkeypatch.setattr(pipeline, "_train_judges", stop)
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


def test_judges_are_reused_only_with_the_same_settings(tmp_path, data_root, monkeypatch):
    """A second `segvae run` reuses the judge a first one trained (same dataset, epochs, data root,
    recipe), retrains it when those change or its weights are gone, and always with --retrain."""
    import harness.judge as judge_mod
    import harness.pipeline as pipeline
    from harness.judge import judge_is_current, judge_settings

    trained = []
    real_train = judge_mod.train_judge
    monkeypatch.setattr(judge_mod, "train_judge",
                        lambda ds, root, **kw: trained.append((ds, kw["epochs"])) or real_train(ds, root, threads=1, **kw))
    p1 = pipeline.Preset("test", judge_epochs=1)

    def judges(preset, retrain=False):
        reused, commands = [], []
        got = pipeline._train_judges(["cvae-mnist"], data_root, tmp_path, preset, commands, reused, retrain)
        assert "epochs=" + str(preset.judge_epochs) in commands[0]  # the command says how it was trained
        return got, reused

    first, reused = judges(p1)
    assert trained == [("mnist", 1)] and reused == []
    jdir = tmp_path / "judges" / "mnist"
    assert judge_is_current(jdir, judge_settings("mnist", data_root, 1))
    assert not judge_is_current(jdir, judge_settings("mnist", data_root, 2))
    assert not judge_is_current(jdir, judge_settings("mnist", tmp_path / "elsewhere", 1))

    again, reused = judges(p1)
    assert trained == [("mnist", 1)] and reused == ["judges/mnist"]
    x = torch.rand(4, 1, 28, 28)
    np.testing.assert_array_equal(again["mnist"].predict(x), first["mnist"].predict(x))  # the same weights

    judges(p1, retrain=True)
    judges(pipeline.Preset("test", judge_epochs=2))
    (jdir / "judge.safetensors").unlink()
    judges(pipeline.Preset("test", judge_epochs=2))
    assert trained == [("mnist", 1), ("mnist", 1), ("mnist", 2), ("mnist", 2)]
