"""Sample images written at the end of training: test overlays (UNet) or the label-swap grid (CVAE)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.collapse import collapse_metrics
from harness.config import ExperimentConfig
from harness.data import class_names, denormalize_image
from harness.figures import save_grid, save_overlays, save_swap_figure
from harness.labelswap import swap_inputs
from harness.run_folder import SAMPLES_DIR


def unnormalize(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised [3,H,W] -> HxWx3 uint8."""
    return (denormalize_image(image.cpu()).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def write_samples(cfg: ExperimentConfig, model, test_ds, out_dir: Path, n_overlays: int = 6):
    """Returns ({name: relative path}, extra metrics)."""
    model.eval()
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    if cfg.task == "segmentation":
        items = [test_ds[i] for i in range(min(n_overlays, len(test_ds)))]
        images = torch.stack([x for x, _ in items]).to(device)
        preds = (model(images) > 0).squeeze(1).cpu().numpy()
        save_overlays(out_dir / SAMPLES_DIR / "overlays.png", [unnormalize(x) for x, _ in items],
                      [m.squeeze(0).numpy() > 0.5 for _, m in items], list(preds))
        return {"overlays": f"{SAMPLES_DIR}/overlays.png"}, {}

    names = class_names(cfg.dataset)
    inputs = swap_inputs(test_ds, 25, cfg.num_classes, cfg.model.get("latent_dim", 16), seed=0)
    outputs = model.swap(*(inputs[k].to(device) for k in ("image", "label", "new_label", "eps"))).cpu()
    save_grid(out_dir / SAMPLES_DIR / "label_swap_grid.png", outputs)
    save_grid(out_dir / SAMPLES_DIR / "label_swap_sources.png", inputs["image"])
    save_swap_figure(out_dir / SAMPLES_DIR / "label_swap_figure.png", inputs["image"], outputs,
                     inputs["label"], inputs["new_label"], names,
                     title=f"{cfg.name}: source (true label) -> output decoded with a WRONG label")
    samples = {"grid": f"{SAMPLES_DIR}/label_swap_grid.png", "sources": f"{SAMPLES_DIR}/label_swap_sources.png",
               "figure": f"{SAMPLES_DIR}/label_swap_figure.png",
               "labels": [[int(a), int(b)] for a, b in zip(inputs["label"], inputs["new_label"])]}
    return samples, {"recon": {"mae": reconstruction_mae(model, test_ds), "judge_acc_true_label": None},
                     "collapse": collapse_metrics(model, test_ds, cfg.num_classes)}


@torch.no_grad()
def reconstruction_mae(model, dataset, batch_size: int = 256) -> float:
    """Mean absolute error of reconstructions with the TRUE label (z = posterior mean)."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([a for a, _ in items]).to(device)
        y = torch.tensor([int(b) for _, b in items], device=device)
        mu, _ = model.encode(x, y)
        total += float((model.decode(mu, y) - x).abs().mean(dim=(1, 2, 3)).sum())
        n += len(items)
    return total / max(n, 1)
