"""Bad input: a clear message naming the file or argument, a non-zero exit, no traceback, nothing half-written."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import cli
from harness.errors import UserError
from tests.fixtures import make_mnist, make_pets
from tests.helpers import TINY_UNET, cli as run_cli


def run_main(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, stderr). argparse errors exit 2 too."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture
def pets(tmp_path):
    return make_pets(tmp_path / "data", n_trainval=9, n_test=3)


def pet_file(root: Path, kind: str, name: str) -> Path:
    sub = "images" if kind == "image" else "annotations/trimaps"
    ext = ".jpg" if kind == "image" else ".png"
    return root / "oxford-iiit-pet" / sub / f"{name}{ext}"


def first_pet(root: Path) -> str:
    line = (root / "oxford-iiit-pet/annotations/trainval.txt").read_text().split("\n")[0]
    return line.split()[0]


TRAIN = ["train", "unet-mp-tr-bce", *TINY_UNET, "--epochs", "1"]


def assert_clean_failure(code, err, *needles, out: Path | None = None):
    assert code == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in err, f"{n!r} not in {err!r}"
    if out is not None:
        assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()


# ------------------------------------------------------------------------------ data
def test_missing_data_root(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code, err = run_main(capsys, *TRAIN, "--data-root", missing, "--out", tmp_path / "o")
    assert_clean_failure(code, err, missing, out=tmp_path / "o")


def test_data_root_wrong_layout(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_main(capsys, *TRAIN, "--data-root", tmp_path / "empty", "--out", tmp_path / "o")
    assert_clean_failure(code, err, "oxford-iiit-pet", out=tmp_path / "o")


def test_data_root_is_a_file(capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, err = run_main(capsys, *TRAIN, "--data-root", f, "--out", tmp_path / "o")
    assert_clean_failure(code, err, f)


def test_image_that_does_not_decode(capsys, pets, tmp_path):
    bad = pet_file(pets, "image", first_pet(pets))
    bad.write_bytes(b"this is not an image at all")
    code, err = run_main(capsys, *TRAIN, "--data-root", pets, "--out", tmp_path / "o")
    assert_clean_failure(code, err, bad.name, out=tmp_path / "o")


def test_jpg_holding_png_loads_but_jpg_holding_text_does_not(pets):
    from harness.data import load_pet_pair

    name = first_pet(pets)
    img, tri = pet_file(pets, "image", name), pet_file(pets, "trimap", name)
    buf = io.BytesIO()
    Image.new("RGBA", Image.open(tri).size, (10, 200, 30, 255)).save(buf, format="PNG")
    img.write_bytes(buf.getvalue())  # a PNG named .jpg, as in the real data
    image, mask = load_pet_pair(img, tri, 32)
    assert image.shape == (32, 32, 3) and set(np.unique(mask)) <= {0, 1}
    img.write_text("GIF89a? no, just text")
    with pytest.raises(UserError, match=img.name):
        load_pet_pair(img, tri, 32)


def test_trimap_with_values_outside_1_2_3(capsys, pets, tmp_path):
    tri = pet_file(pets, "trimap", first_pet(pets))
    a = np.array(Image.open(tri))
    a[0, 0] = 7
    Image.fromarray(a).save(tri)
    code, err = run_main(capsys, *TRAIN, "--data-root", pets, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tri.name, out=tmp_path / "o")


def test_trimap_size_differs_from_image(capsys, pets, tmp_path):
    tri = pet_file(pets, "trimap", first_pet(pets))
    Image.open(tri).resize((13, 11), Image.NEAREST).save(tri)
    code, err = run_main(capsys, *TRAIN, "--data-root", pets, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tri.name, out=tmp_path / "o")


def test_missing_trimap(capsys, pets, tmp_path):
    tri = pet_file(pets, "trimap", first_pet(pets))
    tri.unlink()
    code, err = run_main(capsys, *TRAIN, "--data-root", pets, "--out", tmp_path / "o")
    assert_clean_failure(code, err, tri.name, out=tmp_path / "o")


def test_mnist_raw_files_missing(capsys, tmp_path):
    root = make_mnist(tmp_path / "data", n_train=20, n_test=10)
    missing = root / "MNIST/raw/t10k-labels-idx1-ubyte"
    missing.unlink()
    code, err = run_main(capsys, "train", "cvae-mnist", "--epochs", "1", "--data-root", root, "--out", tmp_path / "o")
    assert_clean_failure(code, err, "MNIST", out=tmp_path / "o")


# ------------------------------------------------------------------------------ settings
def test_unknown_experiment(capsys, tmp_path):
    code, err = run_main(capsys, "train", "unet-nope", "--out", tmp_path / "o")
    assert_clean_failure(code, err, "unet-nope", "unet-mp-tr-bce")


@pytest.mark.parametrize("flag,value", [("--lr", "0"), ("--lr", "-1e-3"), ("--lr", "nan"), ("--batch-size", "0"),
                                        ("--epochs", "-2"), ("--batch-size", "eight")])
def test_invalid_numeric_settings(capsys, tmp_path, flag, value):
    code, err = run_main(capsys, "train", "unet-mp-tr-bce", f"{flag}={value}", "--out", tmp_path / "o")
    assert_clean_failure(code, err, flag, value)


def test_image_size_the_unet_depth_cannot_divide(capsys, tmp_path):
    code, err = run_main(capsys, "train", "unet-mp-tr-bce", "--image-size", "100", "--out", tmp_path / "o")
    assert_clean_failure(code, err, "--image-size", "multiple of 16")


def test_fp16_on_cpu_is_refused_with_advice(capsys, pets, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid where a GPU exists")
    code, err = run_main(capsys, *TRAIN, "--mixed-precision", "fp16", "--data-root", pets, "--out", tmp_path / "o")
    assert_clean_failure(code, err, "fp16", "bf16")


def test_config_file_that_is_not_json(capsys, tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text("{'name': __import__('os')}")
    code, err = run_main(capsys, "train", "unet-mp-tr-bce", "--config", bad, "--out", tmp_path / "o")
    assert_clean_failure(code, err, bad)


def test_label_outside_range_to_the_model():
    from models import CVAE

    model = CVAE(1, 28, hidden_channels=4)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model(torch.rand(2, 1, 28, 28), torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model.decode(torch.zeros(1, 16), torch.tensor([-1]))


# ------------------------------------------------------------------------------ runs and checkpoints
@pytest.fixture(scope="module")
def tiny_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "unet"
    run_cli(*TRAIN, "--data-root", data_root, "--out", out)
    return out


def test_resume_from_another_experiments_run(capsys, tiny_run, data_root, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    before = (other / "metrics.json").read_bytes()
    code, err = run_main(capsys, "train", "unet-sc-up-dice", *TINY_UNET, "--data-root", data_root,
                         "--out", other, "--resume")
    assert_clean_failure(code, err, "unet-mp-tr-bce", "unet-sc-up-dice")
    assert (other / "metrics.json").read_bytes() == before  # nothing already written is lost


def test_weights_from_another_experiment(tiny_run, tmp_path):
    from harness.run_folder import load_run

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["base_channels"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="another experiment"):
        load_run(other)


def test_run_dir_missing(capsys, tmp_path):
    code, err = run_main(capsys, "export", tmp_path / "no-run")
    assert_clean_failure(code, err, tmp_path / "no-run")


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    import harness.train as T
    from harness.config import get_experiment

    cfg = get_experiment("unet-mp-tr-bce").with_base_channels(4).replace(image_size=32, epochs=3, batch_size=4,
                                                                         mixed_precision="no")  # as TINY_UNET
    real_loss, calls = T.train_loss, {"n": 0}
    steps_per_epoch = 2  # 10 train images, batch 4, drop_last

    def poisoned(cfg, model, batch, *args):
        calls["n"] += 1
        loss = real_loss(cfg, model, batch, *args)
        return loss * float("nan") if calls["n"] == steps_per_epoch + 1 else loss

    monkeypatch.setattr(T, "train_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(UserError, match=r"step 3 \(epoch 2\).*last good checkpoint"):
        T.train(cfg, out, data_root=data_root)
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())
    assert state["epoch"] == 1 and not (out / "metrics.json").exists()


def test_second_precision_in_one_process_is_a_clear_error(data_root, tmp_path):
    """Accelerate allows one mixed precision per process; a library caller gets told, and nothing is written."""
    from accelerate import Accelerator

    import harness.train as T
    from harness.config import get_experiment

    Accelerator(mixed_precision="no", cpu=True)  # what an earlier fp32 training in this process leaves
    cfg = get_experiment("unet-mp-tr-bce").with_base_channels(4).replace(image_size=32, epochs=1, batch_size=4,
                                                                         mixed_precision="bf16")
    out = tmp_path / "bf16"
    with pytest.raises(UserError, match=r"already trained with another mixed precision.*'bf16'.*new process"):
        T.train(cfg, out, data_root=data_root)
    assert not (out / "config.json").exists()


def test_failing_wandb_init_continues_and_says_so(data_root, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    p = run_cli(*TRAIN, "--data-root", data_root, "--out", out, "--log-with", "wandb",
                env={"WANDB_MODE": "not-a-mode"})
    assert "could not start the wandb tracker" in p.stdout + p.stderr
    assert (out / "metrics.json").is_file()


def test_wandb_offline_without_account(data_root, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    env = {"WANDB_MODE": "", "WANDB_API_KEY": ""}
    p = run_cli(*TRAIN, "--data-root", data_root, "--out", out, "--log-with", "wandb", env=env)
    assert "logging to wandb (offline)" in p.stdout + p.stderr
    assert list((out / "wandb").glob("wandb/offline-run-*")), list((out / "wandb").rglob("*"))[:5]


def test_setup_script_refuses_a_full_disk_before_installing(tmp_path):
    """setup.sh checks free space first: CI once died in pip with 'No space left on device'."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "scripts/setup.sh", tmp_path / "scripts")
    env = {**os.environ, "SEGVAE_SETUP_MIN_FREE_GB": str(10**9)}  # an exabyte: more than any disk has
    p = subprocess.run(["bash", str(tmp_path / "scripts/setup.sh")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "MB free" in p.stderr and f"{tmp_path}/.venv" in p.stderr and "SEGVAE_SETUP_MIN_FREE_GB" in p.stderr
    assert not (tmp_path / ".venv").exists()
