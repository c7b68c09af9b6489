"""The single way in for data: Oxford-IIIT Pet (segmentation), MNIST and CIFAR-10 (CVAE).

Every split is decoded, validated and resized ONCE into uint8 tensors held in memory, so an
epoch costs tensor indexing, not JPEG decoding, and a bad file fails at start-up with a
message naming it (a `UserError`), not mid-epoch inside a DataLoader worker.

Layouts are torchvision's, so `--download` (torchvision's downloader) and the embedded
sample (`PACKAGE_SAMPLE_ROOT`, the offline default) go through the same code:

    <root>/oxford-iiit-pet/images/<Name>.jpg, annotations/trimaps/<Name>.png, annotations/{trainval,test}.txt
    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    <root>/cifar-10-batches-py/  or  <root>/cifar10-png/{train,test}/<class>/*.png
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from harness.errors import UserError
from harness.io import atomic_write
from models.preprocessing import (CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD, MASK_RULE,  # noqa: F401 (re-exported)
                                  MNIST_CLASSES, PET_CLASSES, class_names)

if TYPE_CHECKING:
    from harness.config import ExperimentConfig

PACKAGE_SAMPLE_ROOT: Path = Path(__file__).parent / "sample_data"

_CACHE_VERSION = "segvae-data-v1"  # bump when decoding/resizing changes, so old caches are not reused
PET_LAYOUT = ("expected <root>/oxford-iiit-pet/images and annotations/trimaps (torchvision OxfordIIITPet "
              "layout); use --download if you are online")


# ---------------------------------------------------------------------------- small helpers
def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """None means the embedded sample; anything else must be an existing directory."""
    root = PACKAGE_SAMPLE_ROOT if data_root is None else Path(data_root).expanduser()
    if not root.is_dir():
        what = "embedded sample data (reinstall the package)" if data_root is None else "a directory"
        raise UserError(f"data root not found: {root} (expected {what})")
    return root


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3,) + (1,) * 2  # broadcast over [..., 3, H, W]
    return (torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(shape),
            torch.tensor(IMAGENET_STD, dtype=x.dtype).view(shape))


def _as_chw_float(x) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if isinstance(x, np.ndarray) and t.ndim == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)  # HxWx3 (what load_pet_pair returns) -> 3xHxW
    if t.ndim < 3 or t.shape[-3] != 3:
        raise UserError(f"expected an RGB image shaped [3,H,W] or [N,3,H,W], got {tuple(t.shape)}")
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def normalize_image(x) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) RGB, channels first, -> float32 normalised with ImageNet mean/std.

    A numpy HxWx3 array (as `load_pet_pair` returns) is accepted and moved to channels first.
    """
    t = _as_chw_float(x)
    mean, std = _stats(t)
    return (t - mean) / std


def denormalize_image(x) -> torch.Tensor:
    """Inverse of `normalize_image`: float32 in [0, 1], channels first (for overlays and previews)."""
    t = torch.as_tensor(x).float()
    if t.ndim < 3 or t.shape[-3] != 3:
        raise UserError(f"expected a normalised image shaped [3,H,W] or [N,3,H,W], got {tuple(t.shape)}")
    mean, std = _stats(t)
    return (t * std + mean).clamp(0.0, 1.0)


def _open_image(path: Path, what: str) -> Image.Image:
    """Open and fully decode (Pillow sniffs the content, so PNG data named .jpg loads)."""
    if not path.is_file():
        raise UserError(f"missing {what} file: {path}")
    try:
        im = Image.open(path)
        im.load()
        return im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot decode {what} {path}: {e} (expected a readable image file)") from None


def _progress(items: Sequence, desc: str):
    """A tqdm bar on stderr when it is a terminal (disable=None)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=None, file=sys.stderr, leave=False, unit="img")


# ---------------------------------------------------------------------------- cache
def _cache_dir() -> Path | None:
    """$SEGVAE_CACHE_DIR (set it to "off" or "" to disable caching), else ~/.cache/segvae."""
    env = os.environ.get("SEGVAE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env).expanduser()
    return Path.home() / ".cache" / "segvae"


def _cache_key(kind: str, paths: Sequence[Path], extra: str) -> str:
    """Hash of (file paths, sizes, mtimes, settings): any edit to a file or the size gives a new key."""
    h = hashlib.sha256(f"{_CACHE_VERSION}|{kind}|{extra}".encode())
    for p in paths:
        st = p.stat() if p.exists() else None
        h.update(f"|{p.resolve()}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())
    return f"{kind}-{h.hexdigest()[:24]}"


def _cached(key: str, build) -> dict[str, np.ndarray]:
    """Return the arrays saved under key, or build() them and save them (best effort, atomic)."""
    d = _cache_dir()
    path = d / f"{key}.npz" if d else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # a damaged cache is not the user's problem: rebuild it
            pass
    arrays = build()
    if path is not None:
        try:
            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            atomic_write(path, write)
        except OSError:
            pass  # read-only home and the like: caching is an optimisation only
    return arrays


# ---------------------------------------------------------------------------- Oxford-IIIT Pet
def load_pet_pair(image_path, trimap_path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode, validate and resize one pair: (uint8 SxSx3 image, uint8 SxS mask in {0,1}).

    Image bilinear, mask nearest-neighbour, both straight to size x size. Mask rule: MASK_RULE.
    """
    image_path, trimap_path = Path(image_path), Path(trimap_path)
    if not trimap_path.is_file():
        raise UserError(f"missing trimap file: {trimap_path} (expected one for image {image_path.name})")
    im = _open_image(image_path, "image")
    tri = _open_image(trimap_path, "trimap")
    if im.size != tri.size:
        raise UserError(f"trimap {trimap_path} is {tri.size[0]}x{tri.size[1]} but image {image_path} is "
                        f"{im.size[0]}x{im.size[1]} (expected the same size)")
    t = np.asarray(tri)
    if t.ndim != 2:
        raise UserError(f"trimap {trimap_path} has {t.shape[-1]} channels (expected a single-channel PNG)")
    bad = np.setdiff1d(np.unique(t), [1, 2, 3])
    if bad.size:
        raise UserError(f"trimap {trimap_path} holds values {bad[:8].tolist()} (expected only 1, 2, 3)")
    mask = Image.fromarray((t != 2).astype(np.uint8))
    img = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    mask = mask.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(img, dtype=np.uint8).copy(), np.asarray(mask, dtype=np.uint8).copy()


def _pet_files(root: Path, split: str, download: bool) -> tuple[list[Path], list[Path]]:
    """torchvision's OxfordIIITPet finds the files (its _images/_segs lists); we decode them ourselves."""
    from torchvision.datasets import OxfordIIITPet

    base = root / "oxford-iiit-pet"
    if not download:
        for need in (base / "images", base / "annotations" / "trimaps"):
            if not need.is_dir():
                raise UserError(f"not found: {need}; {PET_LAYOUT}")
        lst = base / "annotations" / f"{split}.txt"
        if not lst.is_file():
            raise UserError(f"split list not found: {lst}; {PET_LAYOUT}")
    try:
        ds = OxfordIIITPet(str(root), split=split, target_types="segmentation", download=download)
    except (ValueError, IndexError) as e:
        raise UserError(f"cannot parse {base / 'annotations' / (split + '.txt')}: {e} "
                        "(expected lines 'Name class_id species breed_id')") from None
    except (RuntimeError, OSError) as e:
        raise UserError(f"cannot load Oxford-IIIT Pet from {root}: {e}; {PET_LAYOUT}") from None
    if not ds._images:
        raise UserError(f"{base / 'annotations' / (split + '.txt')} lists no images (expected at least one)")
    return list(ds._images), list(ds._segs)


def _load_pets(root: Path, split: str, size: int, download: bool) -> "SegmentationDataset":
    images, segs = _pet_files(root, split, download)

    def build() -> dict[str, np.ndarray]:
        x = np.empty((len(images), size, size, 3), np.uint8)
        m = np.empty((len(images), size, size), np.uint8)
        for i in _progress(range(len(images)), f"pets/{split} {size}px"):
            x[i], m[i] = load_pet_pair(images[i], segs[i], size)
        return {"images": x, "masks": m}

    a = _cached(_cache_key(f"pets-{split}", images + segs, f"size={size}"), build)
    return SegmentationDataset(torch.from_numpy(a["images"]).permute(0, 3, 1, 2).contiguous(),
                               torch.from_numpy(a["masks"]).unsqueeze(1).contiguous(),
                               names=[p.stem for p in images])


def _augment(img: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, random resized crop (scale 0.6-1.0, same box for image and mask) and light colour jitter.

    img float [3,S,S] in [0,1], mask float [1,S,S]. Uses torch's global RNG only, so it is
    deterministic under torch.manual_seed and DataLoader's per-worker seeding.
    """
    s_h, s_w = img.shape[-2:]
    if torch.rand(()) < 0.5:
        img, mask = img.flip(-1), mask.flip(-1)
    scale = 0.6 + 0.4 * torch.rand(()).item()
    ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(()).item())
    area = scale * s_h * s_w
    w = min(s_w, max(1, round(math.sqrt(area * ratio))))
    h = min(s_h, max(1, round(math.sqrt(area / ratio))))
    top = int(torch.randint(0, s_h - h + 1, ()).item())
    left = int(torch.randint(0, s_w - w + 1, ()).item())
    if (h, w) != (s_h, s_w):
        img = F.interpolate(img[None, :, top:top + h, left:left + w], size=(s_h, s_w),
                            mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, :, top:top + h, left:left + w], size=(s_h, s_w), mode="nearest-exact")[0]
    brightness = 0.8 + 0.4 * torch.rand(()).item()
    contrast = 0.8 + 0.4 * torch.rand(()).item()
    img = img * brightness
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).mean()
    img = ((img - gray) * contrast + gray).clamp(0.0, 1.0)
    return img, mask


class SegmentationDataset(Dataset):
    """Preloaded uint8 images [N,3,S,S] and {0,1} masks [N,1,S,S].

    Items: (float32 [3,S,S] ImageNet-normalised, float32 [1,S,S] in {0,1}). `names` are the
    image ids (for predictions and overlays).
    """

    classes = PET_CLASSES

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, names: Sequence[str] = (), augment: bool = False):
        self.images, self.masks, self.names, self.augment = images, masks, list(names), augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i].float() / 255.0
        mask = self.masks[i].float()
        if self.augment:
            img, mask = _augment(img, mask)
        return normalize_image(img), mask

    def subset(self, indices: torch.Tensor, augment: bool = False) -> "SegmentationDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        names = [self.names[j] for j in idx.tolist()] if self.names else []
        return SegmentationDataset(self.images[idx], self.masks[idx], names, augment)


# ---------------------------------------------------------------------------- MNIST / CIFAR-10
class LabelledImages(Dataset):
    """Preloaded uint8 images [N,C,H,W] and int64 labels [N]; items (float32 [C,H,W] in [0,1], int64 scalar)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]):
        self.images, self.labels, self.classes = images, labels.long(), classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].float() / 255.0, self.labels[i]

    def subset(self, indices: torch.Tensor, augment: bool = False) -> "LabelledImages":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return LabelledImages(self.images[idx], self.labels[idx], self.classes)


def _mnist_files(root: Path) -> list[Path]:
    raw = root / "MNIST" / "raw"
    return [raw / f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]


def _check_idx(path: Path) -> None:
    """The IDX header's counts must match the file's size: name the file and the numbers if not.

    Why: torchvision reports a truncated file as "shape ... is invalid", naming neither."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else -1
    dims = {0x801: 1, 0x803: 3}.get(magic)
    if dims is None or len(head) < 4 + 4 * dims:
        raise UserError(f"{path}: not an MNIST IDX file (expected magic 0x00000801 for labels or 0x00000803 "
                        f"for images, found {head[:4].hex() or 'an empty file'})")
    shape = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    expected = 4 + 4 * dims + math.prod(shape)
    if size != expected:
        what = (f"{shape[0]:,} {shape[1]}x{shape[2]} images" if dims == 3 else f"{shape[0]:,} labels")
        raise UserError(f"{path}: expected {expected:,} bytes for {what} (header says {shape[0]:,}), found {size:,}")


def _load_mnist(root: Path, train: bool, download: bool) -> LabelledImages:
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    need = _mnist_files(root)
    missing = [p.name for p in need if not p.is_file()]
    if missing and not download:
        raise UserError(f"MNIST raw files missing in {raw}: {', '.join(missing)} (expected uncompressed "
                        f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte, torchvision MNIST layout); "
                        "use --download if you are online")
    for path in need:
        if path.is_file():
            _check_idx(path)
    try:
        ds = MNIST(str(root), train=train, download=download)
    except Exception as e:  # truncated or foreign IDX files surface as assorted errors
        raise UserError(f"cannot read MNIST from {raw}: {e} (expected valid IDX files)") from None
    if len(ds.data) != len(ds.targets):
        raise UserError(f"MNIST files in {raw} disagree: {len(ds.data)} images, {len(ds.targets)} labels")
    return LabelledImages(ds.data.unsqueeze(1).contiguous(), ds.targets, MNIST_CLASSES)


def _load_cifar_png(folder: Path) -> LabelledImages:
    """A folder dataset in canonical CIFAR10_CLASSES order: <folder>/<class>/*.png, each 32x32 RGB."""
    files, labels = [], []
    for label, cls in enumerate(CIFAR10_CLASSES):
        d = folder / cls
        if not d.is_dir():
            raise UserError(f"CIFAR-10 class folder not found: {d} (expected {folder}/<class>/*.png "
                            f"for classes {', '.join(CIFAR10_CLASSES)})")
        pngs = sorted(d.glob("*.png"))
        if not pngs:
            raise UserError(f"CIFAR-10 class folder is empty: {d} (expected *.png images)")
        files += pngs
        labels += [label] * len(pngs)

    def build() -> dict[str, np.ndarray]:
        x = np.empty((len(files), 32, 32, 3), np.uint8)
        for i in _progress(range(len(files)), f"cifar10/{folder.name}"):
            im = _open_image(files[i], "image")
            if im.size != (32, 32):
                raise UserError(f"image {files[i]} is {im.size[0]}x{im.size[1]} (expected 32x32 CIFAR-10)")
            x[i] = np.asarray(im.convert("RGB"))
        return {"images": x}

    a = _cached(_cache_key(f"cifar10png-{folder.name}", files, ""), build)
    return LabelledImages(torch.from_numpy(a["images"]).permute(0, 3, 1, 2).contiguous(),
                          torch.tensor(labels, dtype=torch.long), CIFAR10_CLASSES)


def _load_cifar(root: Path, train: bool, download: bool) -> LabelledImages:
    from torchvision.datasets import CIFAR10

    split = "train" if train else "test"
    png = root / "cifar10-png"
    if (root / "cifar-10-batches-py").is_dir() or (download and not png.is_dir()):
        try:
            ds = CIFAR10(str(root), train=train, download=download)
        except Exception as e:
            raise UserError(f"cannot read CIFAR-10 from {root / 'cifar-10-batches-py'}: {e}") from None
        return LabelledImages(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                              torch.tensor(ds.targets, dtype=torch.long), CIFAR10_CLASSES)
    if png.is_dir():
        if not (png / split).is_dir():
            raise UserError(f"CIFAR-10 split folder not found: {png / split} (expected {png}/{{train,test}}/<class>/*.png)")
        return _load_cifar_png(png / split)
    raise UserError(f"CIFAR-10 not found under {root}: expected {root / 'cifar-10-batches-py'} (torchvision "
                    f"CIFAR10 layout) or {png}/{{train,test}}/<class>/*.png; use --download if you are online")


# ---------------------------------------------------------------------------- download
DOWNLOADABLE = ("pets", "mnist", "cifar10")


def download(datasets: Sequence[str], data_root) -> Path:
    """Fetch datasets (both splits) into data_root in torchvision's layouts, and nothing else.

    Why a step of its own: `segvae train --download` also trains, and `segvae run` never downloads.
    torchvision skips a dataset whose files are already there (it checks them)."""
    from torchvision.datasets import CIFAR10, MNIST, OxfordIIITPet

    if data_root is None:
        raise UserError("segvae download needs --data-root DIR: the folder to fetch into")
    root = Path(data_root).expanduser()
    unknown = [d for d in datasets if d not in DOWNLOADABLE]
    if unknown:
        raise UserError(f"cannot download {', '.join(unknown)}: expected some of {', '.join(DOWNLOADABLE)}")
    root.mkdir(parents=True, exist_ok=True)
    fetch = {
        "pets": lambda: [OxfordIIITPet(str(root), split=s, target_types="segmentation", download=True)
                         for s in ("trainval", "test")],
        "mnist": lambda: [MNIST(str(root), train=t, download=True) for t in (True, False)],
        "cifar10": lambda: [CIFAR10(str(root), train=t, download=True) for t in (True, False)],
    }
    for name in datasets:
        print(f"downloading {name} into {root} ...", flush=True)
        try:
            fetch[name]()
        except (OSError, RuntimeError) as e:  # urllib's URLError is an OSError; MNIST's mirrors end in RuntimeError
            raise UserError(f"cannot download {name} into {root}: {e} (this needs network access; offline, copy the "
                            "files there in torchvision's layout: docs/data.md)") from None
    return root


# ---------------------------------------------------------------------------- fingerprint
def dataset_files(dataset: str, root: Path) -> list[Path]:
    """The files the loader reads for a dataset under root (both splits)."""
    if dataset == "pets":
        base = root / "oxford-iiit-pet" / "annotations"
        files = [base / "trainval.txt", base / "test.txt"]
        for split in ("trainval", "test"):
            images, segs = _pet_files(root, split, download=False)
            files += images + segs
        return files
    if dataset == "mnist":
        return _mnist_files(root)
    if dataset == "cifar10":
        batches = root / "cifar-10-batches-py"
        found = batches.glob("*") if batches.is_dir() else (root / "cifar10-png").glob("*/*/*.png")
        return sorted(p for p in found if p.is_file())
    raise UserError(f"unknown dataset {dataset!r}: expected one of pets, mnist, cifar10")


def data_fingerprint(dataset: str, root: str | os.PathLike) -> dict:
    """sha256 over the sorted (relative name, size) of the files the loader reads: cheap (no
    content read), and it changes when a file is added, removed, renamed or resized."""
    root = Path(root)
    files = sorted(dataset_files(dataset, root))
    h = hashlib.sha256()
    total = 0
    for p in files:
        size = p.stat().st_size if p.is_file() else -1
        total += max(size, 0)
        h.update(f"{p.relative_to(root).as_posix()}\t{size}\n".encode())
    return {"dataset": dataset, "files": len(files), "bytes": total, "sha256": h.hexdigest()[:16]}


# ---------------------------------------------------------------------------- splits
def split_sizes(cfg: "ExperimentConfig", data_root=None) -> dict[str, int]:
    """{"train", "val", "test"} item counts as build_splits would make them, read from the split
    lists, IDX headers and folder listings without decoding an image (for `segvae run`'s estimate)."""
    root = resolve_data_root(data_root)
    if cfg.dataset == "pets":
        full, test = (len(_pet_files(root, s, download=False)[0]) for s in ("trainval", "test"))
    elif cfg.dataset == "mnist":
        raw = root / "MNIST" / "raw"
        full, test = (int.from_bytes((raw / f"{s}-images-idx3-ubyte").read_bytes()[4:8], "big") for s in ("train", "t10k"))
    elif cfg.dataset == "cifar10":
        png = root / "cifar10-png"
        if png.is_dir():
            full, test = (sum(1 for _ in (png / s).glob("*/*.png")) for s in ("train", "test"))
        else:
            full, test = 50000, 10000  # torchvision's pickled batches hold the whole data set
    else:
        raise UserError(f"unknown dataset {cfg.dataset!r}: expected one of pets, mnist, cifar10")
    val = round(cfg.val_fraction * full)
    train = full - val if cfg.max_train_samples is None else min(full - val, int(cfg.max_train_samples))
    return {"train": train, "val": val, "test": test}


def _split_indices(n: int, fraction: float, seed: int, max_train: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation: the first round(fraction*n) go to val; the train part is truncated after."""
    n_val = round(fraction * n)
    if not 0 < n_val < n:
        raise UserError(f"val_fraction={fraction} of {n} training items gives {n_val} for validation "
                        "(expected at least 1 and fewer than all)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val, train = perm[:n_val], perm[n_val:]
    if max_train is not None:
        if int(max_train) < 1:
            raise UserError(f"invalid setting max_train_samples={max_train!r}: expected a positive integer")
        train = train[: int(max_train)]
    return train.sort().values, val.sort().values


def build_splits(cfg: "ExperimentConfig", data_root=None, download: bool = False) -> dict[str, Dataset]:
    """{"train", "val", "test"} datasets for cfg.dataset.

    val is carved from the training split with cfg.split_seed (not cfg.seed, so every run of an
    experiment validates on the same items); only train is augmented (cfg.augment, segmentation).
    """
    if download and data_root is not None:
        Path(data_root).expanduser().mkdir(parents=True, exist_ok=True)
    root = resolve_data_root(data_root)
    if cfg.dataset == "pets":
        full = _load_pets(root, "trainval", int(cfg.image_size), download)
        test = _load_pets(root, "test", int(cfg.image_size), download)
    elif cfg.dataset == "mnist":
        full, test = _load_mnist(root, True, download), _load_mnist(root, False, download)
    elif cfg.dataset == "cifar10":
        full, test = _load_cifar(root, True, download), _load_cifar(root, False, download)
    else:
        raise UserError(f"unknown dataset {cfg.dataset!r}: expected one of pets, mnist, cifar10")
    train_idx, val_idx = _split_indices(len(full), cfg.val_fraction, cfg.split_seed, cfg.max_train_samples)
    augment = bool(cfg.augment) and cfg.dataset == "pets"
    return {"train": full.subset(train_idx, augment=augment), "val": full.subset(val_idx), "test": test}


# ---------------------------------------------------------------------------- whole splits and subsets
def tensors_of(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a dataset of (image [C,H,W] float in [0,1], label) items into two tensors."""
    if len(dataset) == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and isinstance(labels, torch.Tensor):
        return images.float() / 255.0, labels.long().reshape(-1)  # LabelledImages: preloaded uint8
    loader = torch.utils.data.DataLoader(dataset, batch_size=512, shuffle=False, num_workers=0)
    xs, ys = [], []
    for batch in loader:
        xs.append(torch.as_tensor(batch[0], dtype=torch.float32))
        ys.append(torch.as_tensor(batch[1]).long().reshape(-1))
    return torch.cat(xs), torch.cat(ys)


def class_labels(dataset) -> np.ndarray:
    """Class of every item: labels (MNIST/CIFAR) or, for pets, the breed (the image name's prefix
    before the last '_', as in the Oxford-IIIT list file); one class when neither is known."""
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels).astype(np.int64)
    names = list(getattr(dataset, "names", []) or [])
    if len(names) != len(dataset):
        return np.zeros(len(dataset), dtype=np.int64)  # no names: one class
    breeds = [n.rsplit("_", 1)[0] for n in names]
    index = {b: i for i, b in enumerate(sorted(set(breeds)))}
    return np.asarray([index[b] for b in breeds], dtype=np.int64)


def stratified_indices(labels, n: int | None, seed: int) -> np.ndarray:
    """The one class-stratified sampler (bench accuracy subsets, int8 calibration, scripts).

    All indices when n is None or >= len(labels). Else n indices, sorted: when n >= the number of
    classes every class gets one first (a small class is never left out, as 128 sorted pet images
    left out Bengal), the rest is shared in proportion to class size by largest remainder; each
    class's items are drawn at random (seeded) within it."""
    labels = np.asarray(labels)
    total = len(labels)
    if n is None or n >= total:
        return np.arange(total)
    classes, counts = np.unique(labels, return_counts=True)
    floor = np.ones_like(counts) if n >= len(classes) else np.zeros_like(counts)
    spare = counts - floor
    exact = (n - floor.sum()) * spare / max(spare.sum(), 1)
    share = np.minimum(floor + np.floor(exact).astype(int), counts)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if share.sum() >= n:
            break
        if share[i] < counts[i]:
            share[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, share) if k]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)
