"""One training step (forward + loss + backward + AdamW step) of a tiny UNet and CVAE, fp32 and
bf16 autocast on the CPU, with the project's losses."""
from __future__ import annotations

import math

import pytest
import torch

from harness.bench.backends import example_inputs
from models import build_model
from models.losses import bce_loss, elbo_terms

from microbench.conftest import MODELS

BATCH = 16


def _step_fn(model_name: str, precision: str):
    cfg = MODELS[model_name]()
    torch.manual_seed(0)
    model = build_model(cfg.task, cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = {k: torch.from_numpy(v) for k, v in example_inputs(cfg, BATCH).items()}
    if cfg.task == "segmentation":
        target = (inputs["image"][:, :1] > 0).float()

        def loss_fn():
            return bce_loss(model(inputs["image"]), target)
    else:
        def loss_fn():
            out = model(inputs["image"], inputs["label"])
            return elbo_terms(inputs["image"], out, model.log_scale)["loss"]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.item()

    return cfg, step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("model_name", ["unet", "cvae"])
def test_train_step(benchmark, model_name, precision):
    cfg, step = _step_fn(model_name, precision)
    first = step()
    assert math.isfinite(first), f"the first step's loss is {first}"  # NaN and +-inf both fail
    benchmark.group = f"train-{model_name}"
    benchmark.extra_info.update({"precision": precision, "batch_size": BATCH, "threads": torch.get_num_threads(),
                                 "experiment": cfg.name})
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
    last = step()
    assert math.isfinite(last) and last != first, f"loss {first} -> {last} after the timed steps: the step does not train"
    if benchmark.stats is not None:
        benchmark.extra_info["samples_per_s"] = BATCH / benchmark.stats.stats.mean
