"""Pictures a person looks at: test overlays for UNets, label-swap grids for CVAEs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.io import atomic_write

# Overlay colours: the report's caption and the header drawn on the figure use these names.
TRUTH_COLOR, TRUTH_NAME = (40, 200, 40), "green"
PRED_COLOR, PRED_NAME = (255, 40, 40), "red"
OVERLAY_LEGEND = (f"columns: input image | ground-truth mask in {TRUTH_NAME} | predicted mask in {PRED_NAME} "
                  f"(probability > 0.5), one test image per row")


def _save_png(path, array_uint8: np.ndarray) -> Path:
    from PIL import Image

    return atomic_write(path, lambda p: Image.fromarray(array_uint8).save(p, format="PNG"))


def overlay(image_uint8: np.ndarray, mask: np.ndarray, color=PRED_COLOR, alpha: float = 0.45) -> np.ndarray:
    """Blend a binary mask over an HxWx3 uint8 image."""
    out = image_uint8.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _header(width: int, labels: list[tuple[tuple[str, ...], tuple]], height: int = 14) -> np.ndarray:
    """A white strip with one coloured label per column (the longest variant that fits its column),
    so the figure itself says which colour is which."""
    from PIL import Image, ImageDraw

    cells = []
    for variants, colour in labels:
        cell = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(cell)
        text = next((t for t in variants if draw.textlength(t) <= width - 2), variants[-1])
        draw.text((1, 1), text, fill=tuple(int(c * 0.75) for c in colour))  # darker: readable on white
        cells.append(np.asarray(cell, dtype=np.uint8))
    return np.concatenate(cells, axis=1)


def save_overlays(path, images_uint8: list[np.ndarray], truths: list[np.ndarray], preds: list[np.ndarray]) -> Path:
    """One row per image: input | ground truth (green) | prediction (red), under a header naming them."""
    rows = [np.concatenate([img, overlay(img, t, TRUTH_COLOR), overlay(img, p, PRED_COLOR)], axis=1)
            for img, t, p in zip(images_uint8, truths, preds)]
    head = _header(images_uint8[0].shape[1], [
        (("input",), (0, 0, 0)),
        ((f"truth ({TRUTH_NAME})", "truth", TRUTH_NAME), TRUTH_COLOR),
        ((f"prediction ({PRED_NAME})", "pred. (red)", "pred.", PRED_NAME), PRED_COLOR)])
    return _save_png(path, np.concatenate([head, *rows], axis=0))


def to_uint8_grid(images, nrow: int = 5, pad: int = 2) -> np.ndarray:
    """[N,C,H,W] in [0,1] -> HxWx3 uint8 grid."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().clamp(0, 1), nrow=nrow, padding=pad, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(path, images, nrow: int = 5) -> Path:
    return _save_png(path, to_uint8_grid(images, nrow))


def save_swap_figure(path, sources, outputs, labels, new_labels,
                     class_names, title: str = "") -> Path:
    """5x5 cells, each: source (true label) beside its output (wrong label), labels written out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(sources)
    cols = 5
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.1, rows * 1.35))
    axes = np.atleast_2d(axes)
    cmap = "gray" if sources.shape[1] == 1 else None
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        for k, (img, lab, tag) in enumerate(((sources[i], labels[i], "src"), (outputs[i], new_labels[i], "→"))):
            arr = img.detach().float().clamp(0, 1).permute(1, 2, 0).numpy()
            ax = axes[r, 2 * c + k]
            ax.imshow(arr.squeeze(-1) if cmap else arr, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"{tag} {class_names[int(lab)]}", fontsize=7, color="black" if k == 0 else "crimson")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()

    def write(p):
        fig.savefig(p, format="png", dpi=110)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
