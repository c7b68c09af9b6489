"""The run folder: typed configs round-trip, run.json records the data and provenance, and later
stages default to the recorded data root or fail naming the flag."""
from __future__ import annotations

import json

import pytest

from harness.config import CVAEModel, ExperimentConfig, UNetModel, get_experiment
from harness.data import PACKAGE_SAMPLE_ROOT, data_fingerprint
from harness.errors import UserError
from harness.run_folder import (CONFIG_FILE, RUN_FILE, data_root_for, load_config, record_run, recorded_data_root,
                                save_config)
from tests.fixtures import make_mnist


def test_typed_model_settings_round_trip_and_old_dict_configs_load(tmp_path):
    cfg = get_experiment("cvae-mnist").with_base_channels(8)
    assert isinstance(cfg.model, CVAEModel) and cfg.model.hidden_channels == 8 and cfg.model.latent_dim == 8
    save_config(tmp_path, cfg)
    back = load_config(tmp_path)
    assert back == cfg and back.hash() == cfg.hash() and isinstance(back.model, CVAEModel)
    # a config.json written when the model was a plain dict with only some keys: defaults fill the rest
    old = {**cfg.to_dict(), "task": "segmentation", "dataset": "pets", "loss": "bce", "name": "unet-mp-tr-bce",
           "image_size": 32, "model": {"down": "strided", "base_channels": 4}}
    unet = ExperimentConfig.from_dict(old)
    assert unet.model == UNetModel(down="strided", base_channels=4) and unet.model.get("depth") == 4
    assert dict(unet.model)["up"] == "transpose"  # reads as the UNet's keyword arguments


def test_unknown_model_setting_is_a_clear_error():
    d = get_experiment("unet-mp-tr-bce").to_dict()
    d["model"]["latent_dim"] = 3
    with pytest.raises(UserError, match=r"unknown UNetModel setting\(s\) \['latent_dim'\]"):
        ExperimentConfig.from_dict(d, "x/config.json")


def test_config_hash_includes_the_seed():
    cfg = get_experiment("unet-mp-tr-bce")
    assert cfg.hash() != cfg.replace(seed=1).hash()


def test_record_run_writes_data_root_fingerprint_and_provenance(tmp_path, data_root):
    cfg = get_experiment("cvae-mnist")
    record_run(tmp_path / "run", cfg, data_root, ["segvae", "train", "cvae-mnist"])
    rec = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert rec["data_root"] == str(data_root.absolute()) and rec["config_hash"] == cfg.hash()
    assert rec["data_fingerprint"] == data_fingerprint("mnist", data_root) and rec["data_fingerprint"]["files"] == 4
    assert rec["provenance"]["command"] == "segvae train cvae-mnist"
    assert set(rec["provenance"]["git"]) == {"commit", "dirty"} and rec["provenance"]["versions"]["torch"]
    assert recorded_data_root(tmp_path / "run") == data_root.absolute()
    assert data_root_for(tmp_path / "run") == data_root.absolute()
    assert data_root_for(tmp_path / "run", given=tmp_path) == tmp_path  # a flag wins over the record

    record_run(tmp_path / "emb", cfg, None, [])
    assert json.loads((tmp_path / "emb" / RUN_FILE).read_text())["data_root"] == "embedded"
    assert recorded_data_root(tmp_path / "emb") == PACKAGE_SAMPLE_ROOT


def test_a_run_without_a_recorded_data_root_is_an_error_not_the_embedded_sample(tmp_path):
    save_config(tmp_path, get_experiment("cvae-mnist"))
    assert (tmp_path / CONFIG_FILE).is_file() and recorded_data_root(tmp_path) is None
    with pytest.raises(UserError, match=r"run.json not found.*segvae export needs the run's data; pass --data-root"):
        data_root_for(tmp_path, None, "segvae export")


def test_fingerprint_changes_when_a_data_file_changes(tmp_path):
    root = make_mnist(tmp_path / "m", n_train=20, n_test=10)
    first = data_fingerprint("mnist", root)
    assert data_fingerprint("mnist", root) == first
    raw = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes() + b"\0")
    assert data_fingerprint("mnist", root)["sha256"] != first["sha256"]


def test_judge_of_a_run_without_a_record_names_the_missing_data_root(tmp_path, capsys):
    """`segvae judge mnist --runs RUN` defaults to the run's data; an unrecorded run is exit 2, not the sample."""
    from harness.cli import main

    save_config(tmp_path / "run", get_experiment("cvae-mnist"))
    assert main(["judge", "mnist", "--out", str(tmp_path / "j"), "--runs", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / RUN_FILE} not found" in err and "segvae judge needs the run's data" in err
    assert not (tmp_path / "j").exists()
