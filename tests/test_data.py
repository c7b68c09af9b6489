"""harness.data: layouts, mask rule, item contracts, splits, errors, the embedded sample, real data."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import data as D
from harness.config import get_experiment
from harness.errors import UserError
from tests.fixtures import PNG_AS_JPG, make_cifar_png, make_mnist, make_pets

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data"  # the real-data sample beside the checkout (README: ../shared/data)


def seg_cfg(**kw):
    return get_experiment("unet-mp-tr-bce").replace(**{"image_size": 32, "augment": False, **kw})


def cvae_cfg(dataset, **kw):
    return get_experiment(f"cvae-{dataset}").replace(**kw)


def list_len(root: Path, split: str) -> int:
    return len((root / "oxford-iiit-pet" / "annotations" / f"{split}.txt").read_text().split("\n")) - 1


@pytest.fixture
def pets(tmp_path):
    """A fresh small pets tree that a test may break."""
    return make_pets(tmp_path / "d", n_trainval=6, n_test=3)


# ---------------------------------------------------------------------------- mask rule, pairs
def test_mask_rule_on_hand_made_trimap(tmp_path):
    tri = np.array([[1, 2, 3, 2], [2, 2, 1, 3], [3, 1, 2, 2], [1, 1, 1, 2]], np.uint8)
    Image.fromarray(tri, "L").save(tmp_path / "t.png")
    Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(tmp_path / "i.jpg", format="JPEG")
    img, mask = D.load_pet_pair(tmp_path / "i.jpg", tmp_path / "t.png", 4)
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8
    assert mask.dtype == np.uint8 and mask.shape == (4, 4)
    np.testing.assert_array_equal(mask, (tri != 2).astype(np.uint8))  # 1 and 3 -> 1, 2 -> 0
    assert "1 (pet) and 3 (border) -> 1" in D.MASK_RULE


def test_load_pet_pair_resizes_mask_nearest(data_root):
    img, mask = D.load_pet_pair(data_root / "oxford-iiit-pet/images/Bengal_1.jpg",
                                data_root / "oxford-iiit-pet/annotations/trimaps/Bengal_1.png", 48)
    assert img.shape == (48, 48, 3) and mask.shape == (48, 48)
    assert set(np.unique(mask).tolist()) == {0, 1}


def test_png_named_jpg_loads(data_root):
    path = data_root / "oxford-iiit-pet/images" / f"{PNG_AS_JPG}.jpg"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGBA"
    img, mask = D.load_pet_pair(path, data_root / f"oxford-iiit-pet/annotations/trimaps/{PNG_AS_JPG}.png", 16)
    assert img.shape == (16, 16, 3) and mask.max() == 1


# ---------------------------------------------------------------------------- items
def test_segmentation_items(data_root):
    s = D.build_splits(seg_cfg(), data_root)
    assert set(s) == {"train", "val", "test"}
    for split in s.values():
        x, m = split[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert m.shape == (1, 32, 32) and m.dtype == torch.float32
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    ds = s["train"]
    x, _ = ds[1]
    torch.testing.assert_close(x, D.normalize_image(ds.images[1]))
    torch.testing.assert_close(D.denormalize_image(x), ds.images[1].float() / 255, atol=1e-6, rtol=0)
    raw = ds.images[1].float() / 255
    mean = torch.tensor(D.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(D.IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    masks = torch.stack([ds[i][1] for i in range(len(ds))])
    assert 0.05 < masks.mean() < 0.6  # the ellipse "pet" is there, not all background


def test_normalize_accepts_hwc_numpy_and_batches():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw = D.normalize_image(a)
    assert chw.shape == (3, 5, 7)
    torch.testing.assert_close(D.normalize_image(torch.from_numpy(a).permute(2, 0, 1)[None])[0], chw)
    with pytest.raises(UserError):
        D.normalize_image(np.zeros((4, 4)))


def test_augmentation_train_only_deterministic_and_mask_binary(data_root):
    s = D.build_splits(seg_cfg(augment=True), data_root)
    assert s["train"].augment and not s["val"].augment and not s["test"].augment
    torch.manual_seed(7)
    a = [s["train"][i] for i in range(len(s["train"]))]
    torch.manual_seed(7)
    b = [s["train"][i] for i in range(len(s["train"]))]
    for (xa, ma), (xb, mb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ma, mb)
        assert xa.shape == (3, 32, 32) and ma.shape == (1, 32, 32)
        assert set(torch.unique(ma).tolist()) <= {0.0, 1.0}
    plain = D.build_splits(seg_cfg(augment=False), data_root)["train"]
    assert any(not torch.equal(a[i][0], plain[i][0]) for i in range(len(plain)))
    torch.manual_seed(7)
    v1 = s["val"][0]
    torch.manual_seed(8)
    assert torch.equal(s["val"][0][0], v1[0])


@pytest.mark.parametrize("dataset,shape", [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_cvae_items(data_root, dataset, shape):
    s = D.build_splits(cvae_cfg(dataset), data_root)
    for split in s.values():
        x, y = split[0]
        assert x.shape == shape and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert y.dtype == torch.int64 and y.ndim == 0 and 0 <= int(y) < 10
    assert s["train"].classes == D.class_names(dataset)


def test_mnist_labels_match_content(data_root):
    ds = D.build_splits(cvae_cfg("mnist"), data_root)["test"]
    assert len(ds) == 32
    for i in range(len(ds)):
        x, y = ds[i]
        assert x[0, 2 + 2 * int(y), 10] == 1.0  # the fixture's bar sits on row 2 + 2*label


def test_cifar_png_class_order(data_root):
    ds = D.build_splits(cvae_cfg("cifar10"), data_root)["test"]
    assert ds.classes == D.CIFAR10_CLASSES
    assert ds.labels.tolist() == [k for k in range(10) for _ in range(2)]
    for i in range(len(ds)):
        x, y = ds[i]
        red = x[0].mean().item() * 255
        assert abs(red - (20 + 22 * int(y) + 9.5)) < 3  # fixture: red channel encodes the class


def test_class_names():
    assert D.class_names("pets") == ("background", "pet")
    assert D.class_names("mnist") == tuple("0123456789")
    assert D.class_names("cifar10")[0] == "airplane" and len(D.CIFAR10_CLASSES) == 10
    with pytest.raises(UserError, match="imagenet"):
        D.class_names("imagenet")


# ---------------------------------------------------------------------------- splits
@pytest.mark.parametrize("dataset", ["pets", "mnist"])
def test_val_split_disjoint_deterministic_sized(data_root, dataset):
    cfg = seg_cfg() if dataset == "pets" else cvae_cfg(dataset)
    s1, s2 = D.build_splits(cfg, data_root), D.build_splits(cfg.replace(seed=99), data_root)
    n = len(s1["train"]) + len(s1["val"])
    assert len(s1["val"]) == round(cfg.val_fraction * n)
    for k in ("train", "val"):
        assert torch.equal(s1[k].images, s2[k].images)  # cfg.seed does not move the split
    key = (lambda d: d.names) if dataset == "pets" else (lambda d: [bytes(x.numpy()) for x in d.images])
    tr, va = key(s1["train"]), key(s1["val"])
    assert not set(tr) & set(va) and len(set(tr) | set(va)) == n
    s3 = D.build_splits(cfg.replace(split_seed=cfg.split_seed + 1), data_root)
    assert key(s3["val"]) != va  # split_seed does


def test_max_train_samples_truncates_train_only(data_root):
    full = D.build_splits(cvae_cfg("mnist"), data_root)
    cut = D.build_splits(cvae_cfg("mnist", max_train_samples=5), data_root)
    assert len(cut["train"]) == 5 and len(cut["val"]) == len(full["val"])
    assert torch.equal(cut["val"].images, full["val"].images)
    assert len(cut["test"]) == len(full["test"])
    with pytest.raises(UserError, match="val_fraction"):
        D.build_splits(cvae_cfg("mnist", val_fraction=0.001), data_root)


def test_test_split_is_the_list_file(data_root):
    s = D.build_splits(seg_cfg(), data_root)
    assert len(s["test"]) == list_len(data_root, "test") == 6
    assert len(s["train"]) + len(s["val"]) == list_len(data_root, "trainval") == 12
    names = (data_root / "oxford-iiit-pet/annotations/test.txt").read_text().split()[::4]
    assert s["test"].names == names


# ---------------------------------------------------------------------------- cache
def test_preload_cache_is_used_and_keyed(pets, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGVAE_CACHE_DIR", str(tmp_path / "cache"))
    first = D.build_splits(seg_cfg(), pets)
    files = sorted((tmp_path / "cache").glob("pets-*.npz"))
    assert len(files) == 2
    monkeypatch.setattr(D, "load_pet_pair", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = D.build_splits(seg_cfg(), pets)
    assert torch.equal(first["train"].images, again["train"].images)
    with pytest.raises(AssertionError):  # another size is another key
        D.build_splits(seg_cfg(image_size=48), pets)


# ---------------------------------------------------------------------------- errors
def raises_naming(path, fn, *args, **kw):
    with pytest.raises(UserError) as e:
        fn(*args, **kw)
    assert str(path) in str(e.value), str(e.value)
    return str(e.value)


def test_error_data_root_missing(tmp_path):
    raises_naming(tmp_path / "nope", D.resolve_data_root, tmp_path / "nope")
    raises_naming(tmp_path / "nope", D.build_splits, seg_cfg(), tmp_path / "nope")
    assert D.resolve_data_root(None) == D.PACKAGE_SAMPLE_ROOT


def test_error_wrong_pet_layout(tmp_path):
    msg = raises_naming(tmp_path / "oxford-iiit-pet", D.build_splits, seg_cfg(), tmp_path)
    assert "torchvision OxfordIIITPet layout" in msg and "--download" in msg


def test_error_image_does_not_decode(pets):
    bad = pets / "oxford-iiit-pet/images/Bengal_1.jpg"
    bad.write_bytes(b"this is not an image")
    raises_naming(bad, D.build_splits, seg_cfg(), pets)


def test_error_trimap_values(pets):
    tri = pets / "oxford-iiit-pet/annotations/trimaps/Bengal_1.png"
    a = np.asarray(Image.open(tri)).copy()
    a[0, 0] = 7
    Image.fromarray(a, "L").save(tri)
    msg = raises_naming(tri, D.build_splits, seg_cfg(), pets)
    assert "7" in msg


def test_error_trimap_size(pets):
    tri = pets / "oxford-iiit-pet/annotations/trimaps/Bengal_1.png"
    Image.open(tri).resize((10, 10), Image.Resampling.NEAREST).save(tri)
    raises_naming(tri, D.build_splits, seg_cfg(), pets)


def test_error_missing_trimap(pets):
    tri = pets / "oxford-iiit-pet/annotations/trimaps/Bengal_1.png"
    tri.unlink()
    raises_naming(tri, D.build_splits, seg_cfg(), pets)


@pytest.mark.parametrize("name,expected,what", [
    ("t10k-images-idx3-ubyte", 16 + 10 * 28 * 28, "10 28x28 images"),
    ("train-labels-idx1-ubyte", 8 + 20, "20 labels"),
])
def test_error_mnist_truncated_idx_names_the_file_and_the_sizes(tmp_path, name, expected, what):
    root = make_mnist(tmp_path / "m", n_train=20, n_test=10)
    path = root / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[:expected - 7])
    msg = raises_naming(path, D.build_splits, cvae_cfg("mnist"), root)
    assert f"expected {expected:,} bytes for {what}" in msg and f"found {expected - 7:,}" in msg


def test_error_mnist_foreign_file_is_not_idx(tmp_path):
    root = make_mnist(tmp_path / "m", n_train=20, n_test=10)
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(b"<html>not found</html>")
    assert "not an MNIST IDX file" in raises_naming(path, D.build_splits, cvae_cfg("mnist"), root)


def test_error_mnist_raw_missing(tmp_path):
    root = make_mnist(tmp_path / "m", n_train=10, n_test=10)
    (root / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    msg = raises_naming(root / "MNIST" / "raw", D.build_splits, cvae_cfg("mnist"), root)
    assert "t10k-labels-idx1-ubyte" in msg


def test_error_cifar(tmp_path):
    root = make_cifar_png(tmp_path / "c", 1, 1)
    for f in (root / "cifar10-png/train/dog").glob("*.png"):
        f.unlink()
    raises_naming(root / "cifar10-png/train/dog", D.build_splits, cvae_cfg("cifar10"), root)
    shutil.rmtree(root / "cifar10-png/train/dog")
    raises_naming(root / "cifar10-png/train/dog", D.build_splits, cvae_cfg("cifar10"), root)
    raises_naming(tmp_path, D.build_splits, cvae_cfg("cifar10"), tmp_path)  # no CIFAR at all


# ---------------------------------------------------------------------------- embedded sample, real data
def test_embedded_sample_loads():
    root = D.PACKAGE_SAMPLE_ROOT
    assert (root / "ATTRIBUTION.md").is_file()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size < 10_000_000
    s = D.build_splits(seg_cfg())
    assert len(s["train"]) + len(s["val"]) == 90 and len(s["test"]) == 60
    with Image.open(root / "oxford-iiit-pet/images/Abyssinian_5.jpg") as im:
        assert im.format == "PNG"  # the quirk is in the sample
    assert "Abyssinian_5" in s["test"].names
    for dataset in ("mnist", "cifar10"):
        s = D.build_splits(cvae_cfg(dataset))
        assert len(s["train"]) + len(s["val"]) == 1000 and len(s["test"]) == 1000
        assert torch.bincount(s["test"].labels, minlength=10).min() > 0


@pytest.mark.skipif(not (REAL / "oxford-iiit-pet").is_dir(),
                    reason=f"no real data at {REAL} (../shared/data beside the checkout): nothing to load")
def test_real_data_loads():
    s = D.build_splits(seg_cfg(), REAL)
    assert len(s["train"]) + len(s["val"]) == 240 and len(s["test"]) == 238
    for dataset in ("mnist", "cifar10"):
        s = D.build_splits(cvae_cfg(dataset), REAL)
        assert len(s["train"]) + len(s["val"]) == 8000 and len(s["test"]) == 8000, dataset


# ---------------------------------------------------------------------------- segvae download (offline)
@pytest.fixture
def no_network(monkeypatch):
    """Every URL open fails as it does on a machine without network: nothing can be fetched."""
    import urllib.error
    import urllib.request

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_download_without_network_says_what_and_where(no_network, tmp_path, capsys):
    from harness.cli import main

    root = tmp_path / "data"
    assert main(["download", "mnist", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "cannot download mnist into" in err and str(root) in err and "network access" in err
    assert "Traceback" not in err
    assert not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_download_keeps_data_already_there_and_trains_nothing(no_network, data_root, capsys):
    """The fixture tree holds pets and MNIST in torchvision's layouts: checked, nothing fetched."""
    from harness.cli import main

    before = sorted(p.relative_to(data_root) for p in data_root.rglob("*"))
    assert main(["download", "pets", "mnist", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert f"data in {data_root}" in out and "segvae train EXPERIMENT --data-root" in out
    assert sorted(p.relative_to(data_root) for p in data_root.rglob("*")) == before


def test_download_needs_a_data_root_and_known_datasets(capsys):
    from harness.cli import main

    with pytest.raises(SystemExit) as e:
        main(["download", "mnist"])
    assert e.value.code == 2 and "--data-root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["download", "imagenet", "--data-root", "x"])
    assert e.value.code == 2 and "imagenet" in capsys.readouterr().err
    with pytest.raises(UserError, match="expected some of pets, mnist, cifar10"):
        D.download(["imagenet"], "x")
