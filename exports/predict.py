"""`segvae predict`: segmentation masks and overlays from an exported model.onnx, with ONNX Runtime only.

Needs only onnxruntime, numpy and Pillow (no torch, nothing from `harness`): everything the model
needs is in its metadata (image_size, mean/std, written by exports/onnx_export.build_metadata). Each image is converted to RGB, resized to image_size x
image_size (bilinear, as in training), scaled to [0,1], normalised, run, and the logits are
resized back (bilinear) to the ORIGINAL image size and thresholded at 0 (probability 0.5).

Writes, per input <stem>: <stem>_mask.png (0 background / 255 pet, original size) and
<stem>_overlay.png (the image with the mask in translucent red), atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from exports.session import OrtSession
from models.errors import UserError
from models.io import atomic_write

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
OVERLAY_COLOUR = (255, 0, 0)
OVERLAY_ALPHA = 0.45


def _expand(image_paths: Iterable) -> list[Path]:
    if isinstance(image_paths, (str, os.PathLike)):
        image_paths = [image_paths]
    out: list[Path] = []
    for p in map(Path, image_paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise UserError(f"no images found in folder {p} (expected {', '.join(sorted(IMAGE_EXTS))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"image not found: {p}")
    if not out:
        raise UserError("no images given: expected one or more image files or folders")
    return out


def load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e} (expected a readable image file, e.g. JPEG or PNG)") from None


def preprocess(img: Image.Image, size: int, mean, std) -> np.ndarray:
    """RGB PIL image -> float32 [1,3,size,size], /255 then (x - mean) / std (the model's metadata)."""
    x = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def logits_to_mask(logits: np.ndarray, width: int, height: int) -> np.ndarray:
    """[1,1,s,s] logits -> uint8 [height,width] mask in {0,255} (bilinear resize, threshold at logit 0)."""
    plane = Image.fromarray(np.asarray(logits, np.float32)[0, 0])
    up = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))
    return np.where(up > 0, 255, 0).astype(np.uint8)


def overlay(img: Image.Image, mask: np.ndarray) -> Image.Image:
    base = np.asarray(img, np.float32)
    a = (mask > 0)[..., None] * OVERLAY_ALPHA
    out = base * (1 - a) + np.asarray(OVERLAY_COLOUR, np.float32) * a
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _save_png(img: Image.Image, path: Path) -> Path:
    return atomic_write(path, lambda p: img.save(p, format="PNG"))


def predict(onnx_path, image_paths, out_dir, threads: int | None = None) -> list[Path]:
    """Masks and overlays for image_paths (files or folders) with a segmentation model.onnx.

    Returns the written paths: <stem>_mask.png and <stem>_overlay.png per image, in input order.
    """
    sess = OrtSession(onnx_path, threads=threads)
    meta = sess.metadata
    if meta.get("graph") != "segmentation":
        raise UserError(f"{onnx_path} is a {meta.get('graph', 'unknown')!r} graph: predict needs a segmentation "
                        "model.onnx written by `segvae export` (its metadata has graph=segmentation)")
    try:
        size, mean, std = int(meta["image_size"]), meta["mean"], meta["std"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{onnx_path} lacks image_size/mean/std metadata (expected a model written by "
                        "`segvae export`)") from None
    paths = _expand(image_paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for path in paths:
        img = load_rgb(path)
        logits = sess(image=preprocess(img, size, mean, std))
        mask = logits_to_mask(logits, *img.size)
        stem, k = path.stem, 2
        while stem in used:  # same name from two folders: keep both
            stem, k = f"{path.stem}-{k}", k + 1
        used.add(stem)
        written.append(_save_png(Image.fromarray(mask), out_dir / f"{stem}_mask.png"))
        written.append(_save_png(overlay(img, mask), out_dir / f"{stem}_overlay.png"))
    print(f"wrote {len(paths)} mask(s) and overlay(s) to {out_dir}")
    return written
