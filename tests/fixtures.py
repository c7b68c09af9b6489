"""Tiny SYNTHETIC datasets in the real on-disk layouts, so the real loaders run in unit tests
without shared/data. Everything is deterministic (fixed numpy seeds).

    make_pets(root)       -> root/oxford-iiit-pet/{images,annotations/trimaps,annotations/*.txt}
    make_mnist(root)      -> root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    make_cifar_png(root)  -> root/cifar10-png/{train,test}/<class>/*.png
    make_all(root)        -> all three under one root
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

# (breed, "class_id species breed_id") exactly as in the original list files
PET_BREEDS = (("Abyssinian", "1 1 1"), ("american_bulldog", "2 2 1"), ("Bengal", "6 1 2"))
PNG_AS_JPG = "Abyssinian_5"  # like the original release: PNG (RGBA) data in a .jpg file
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def pet_pair(rng: np.random.Generator, w: int, h: int, colour) -> tuple[np.ndarray, np.ndarray]:
    """A coloured ellipse "pet" on a textured background; trimap 1 inside, 3 on a thin ring, 2 outside."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    ax, ay = w * rng.uniform(0.18, 0.3), h * rng.uniform(0.18, 0.3)
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    stripes = 0.5 + 0.5 * np.sin((xx + 2 * yy) * rng.uniform(0.3, 0.8))
    bg = 60 + 80 * stripes[..., None] + rng.integers(0, 40, (h, w, 3))
    img = np.where((r < 1.0)[..., None], np.array(colour)[None, None] + rng.integers(-20, 20, (h, w, 3)), bg)
    trimap = np.full((h, w), 2, np.uint8)
    trimap[r < 1.12] = 3
    trimap[r < 0.88] = 1
    return np.clip(img, 0, 255).astype(np.uint8), trimap


def make_pets(root, n_trainval: int = 12, n_test: int = 6, size: tuple[int, int] = (72, 64)) -> Path:
    """n_* pairs split round-robin across 3 breeds; sizes vary around size=(width, height)."""
    root = Path(root)
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = {"Abyssinian": (200, 120, 40), "american_bulldog": (230, 230, 210), "Bengal": (170, 90, 30)}
    counter = {b: 0 for b, _ in PET_BREEDS}
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        lines = []
        for i in range(n):
            breed, ids = PET_BREEDS[i % 3]
            counter[breed] += 1
            name = f"{breed}_{counter[breed] + (4 if breed == 'Abyssinian' else 0)}"  # Abyssinian_5 comes first
            w, h = size[0] + int(rng.integers(-8, 9)), size[1] + int(rng.integers(-8, 9))
            img, tri = pet_pair(rng, w, h, colours[breed])
            if name == PNG_AS_JPG:
                rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
                Image.fromarray(rgba, "RGBA").save(base / "images" / f"{name}.jpg", format="PNG")
            else:
                Image.fromarray(img).save(base / "images" / f"{name}.jpg", format="JPEG", quality=95)
            Image.fromarray(tri, "L").save(base / "annotations" / "trimaps" / f"{name}.png")
            lines.append(f"{name} {ids}\n")
        (base / "annotations" / f"{split}.txt").write_text("".join(lines))
    return root


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def mnist_digits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose content depends on the label: a bright bar whose row is 2 + 2*label."""
    x = rng.integers(0, 30, (len(labels), 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        x[i, 2 + 2 * int(y): 4 + 2 * int(y), 4:24] = 255
    return x


def make_mnist(root, n_train: int = 64, n_test: int = 32) -> Path:
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", mnist_digits(labels, rng))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_cifar_png(root, n_per_class_train: int = 4, n_per_class_test: int = 2) -> Path:
    """32x32 RGB PNGs whose mean colour encodes the class (class k: red channel ~ 20 + 22k)."""
    root = Path(root)
    rng = np.random.default_rng(2)
    for split, n in (("train", n_per_class_train), ("test", n_per_class_test)):
        for k, cls in enumerate(CIFAR10_CLASSES):
            d = root / "cifar10-png" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                img = rng.integers(0, 20, (32, 32, 3)) + np.array([20 + 22 * k, 100, 200 - 15 * k])
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{cls}_s_{j:06d}.png")
    return root


def make_all(root) -> Path:
    root = Path(root)
    make_pets(root)
    make_mnist(root)
    make_cifar_png(root)
    return root
