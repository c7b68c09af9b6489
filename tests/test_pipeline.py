"""`segvae run` presets: which configs and seeds each task gets (no training here)."""
from __future__ import annotations

import pytest

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
