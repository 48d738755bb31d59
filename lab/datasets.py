"""Every data set the lab trains on, behind one call: `load_dataset(name_or_path)`.

    shapes         procedural silhouettes on clutter, offline, with object masks (the default)
    digits         scikit-learn's 1,797 real 8x8 handwritten digits, upsampled to 28x28
    mnist, fashion-mnist, cifar10
                   torchvision's copies under data_root, downloaded when allowed
    PATH           an ImageFolder directory, or a .zip of one, read safely in memory

Images stay uint8 on the CPU (a 50k-image CIFAR-10 is 150 MB); `Dataset.normalize`
turns a batch into float input on whatever device the batch is on. Results are cached
in-process and handed out as copies, so a caller may change its tensors freely.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from .data.base import Dataset, DatasetError, channel_stats, resize_uint8, stratified_split, subsample
from .safezip import SafeZip, UnsafeZipError, ZipLimits

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "SHAPES_CLASSES",
    "SafeZip",
    "UnsafeZipError",
    "ZipLimits",
    "clear_cache",
    "dataset_help",
    "load_dataset",
]

DATASETS = ("shapes", "digits", "mnist", "fashion-mnist", "cifar10")

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}

SHAPES_DEFAULT_SIZES = (8000, 2000)
_DEFAULT_IMAGE_SIZE = {"shapes": 32, "digits": 28}
_FOLDER_IMAGE_SIZE = 32
_MAX_IMAGE_SIZE = 512

from .data.shapes import CLASSES as _SHAPE_NAMES  # noqa: E402

SHAPES_CLASSES = list(_SHAPE_NAMES)


def dataset_help() -> dict[str, str]:
    """One line per built-in data set, for the UI's dropdown and the CLI's --help."""
    return {
        "shapes": f"{len(SHAPES_CLASSES)} procedural silhouettes on clutter, 32x32 RGB, with object masks (offline)",
        "digits": "scikit-learn's 1,797 handwritten 8x8 digits upsampled to 28x28 (offline)",
        "mnist": "MNIST handwritten digits, 28x28 grey, 60k/10k (torchvision download)",
        "fashion-mnist": "Fashion-MNIST clothing, 28x28 grey, 60k/10k (torchvision download)",
        "cifar10": "CIFAR-10 photos, 32x32 RGB, 50k/10k (torchvision download)",
    }


# ----------------------------------------------------------------------------- helpers


def _check_int(name: str, v, lo: int, hi: int | None = None) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise DatasetError(f"{name} must be a whole number, got {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise DatasetError(f"{name} must be between {lo} and {hi}, got {v}" if hi else f"{name} must be at least {lo}, got {v}")
    return v


def _finish(name, classes, xtr, ytr, xte, yte, report, train_masks=None, test_masks=None) -> Dataset:
    mean, std = channel_stats(xtr)
    return Dataset(
        name=name,
        classes=list(classes),
        input_shape=tuple(int(s) for s in xtr.shape[1:]),
        train_x=xtr,
        train_y=ytr,
        test_x=xte,
        test_y=yte,
        mean=mean,
        std=std,
        test_masks=test_masks,
        train_masks=train_masks,
        report=report,
    )


def _take(x, y, idx):
    return (x, y) if idx is None else (x[idx].contiguous(), y[idx].contiguous())


# ----------------------------------------------------------------------------- builders (cached)


@functools.lru_cache(maxsize=8)
def _shapes_arrays(n: int, seed: int, stream: int, size: int):
    from .data.shapes import generate_shapes

    x, y, m = generate_shapes(n, seed, stream, size)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)


def _build_shapes(seed, image_size, train_size, test_size) -> Dataset:
    size = image_size or _DEFAULT_IMAGE_SIZE["shapes"]
    if size < 16:
        raise DatasetError(f"shapes needs image_size of at least 16 to draw its outlines, got {size}")
    n_train = train_size or SHAPES_DEFAULT_SIZES[0]
    n_test = test_size or SHAPES_DEFAULT_SIZES[1]
    xtr, ytr, mtr = _shapes_arrays(n_train, seed, 0, size)
    xte, yte, mte = _shapes_arrays(n_test, seed, 1, size)
    report = {"source": f"procedural (lab.data.shapes, seed {seed})", "masks": "object silhouettes"}
    return _finish("shapes", SHAPES_CLASSES, xtr, ytr, xte, yte, report, mtr, mte)


def _build_digits(seed, image_size, train_size, test_size) -> Dataset:
    from .data.digits import load_digits_arrays

    xtr, ytr, xte, yte = load_digits_arrays(image_size or _DEFAULT_IMAGE_SIZE["digits"], seed)
    xtr, ytr = _take(xtr, ytr, subsample(len(ytr), train_size, ytr, seed, 0))
    xte, yte = _take(xte, yte, subsample(len(yte), test_size, yte, seed, 1))
    report = {"source": "sklearn.datasets.load_digits (UCI optical digits, 8x8 upsampled)"}
    return _finish("digits", [str(i) for i in range(10)], xtr, ytr, xte, yte, report)


def _build_torchvision(name, root: Path, download, seed, image_size, train_size, test_size) -> Dataset:
    from .data.torchvision_sets import load_torchvision

    xtr, ytr, xte, yte, classes, report = load_torchvision(name, root, download)
    xtr, ytr = _take(xtr, ytr, subsample(len(ytr), train_size, ytr, seed, 0))
    xte, yte = _take(xte, yte, subsample(len(yte), test_size, yte, seed, 1))
    if image_size:
        xtr, xte = resize_uint8(xtr, image_size), resize_uint8(xte, image_size)
    return _finish(name, classes, xtr, ytr, xte, yte, report)


def _build_folder(path: Path, seed, image_size, train_size, test_size, limits) -> Dataset:
    from .data.folder import load_image_folder

    x, y, classes, report = load_image_folder(path, image_size or _FOLDER_IMAGE_SIZE, limits)
    tr, te = stratified_split(y.numpy(), 0.2, seed)
    if len(te) == 0:
        raise DatasetError(f"{path.name} has too few images for a test split: give every class at least two images")
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    xtr, ytr, xte, yte = x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous()
    xtr, ytr = _take(xtr, ytr, subsample(len(ytr), train_size, ytr, seed, 0))
    xte, yte = _take(xte, yte, subsample(len(yte), test_size, yte, seed, 1))
    stem = path.name[: -len(".zip")] if path.name.lower().endswith(".zip") else path.name
    return _finish(stem or str(path), classes, xtr, ytr, xte, yte, report)


def _fingerprint(path: Path) -> str:
    """Changes whenever the folder's or zip's content could have changed, so the cache never serves stale data."""
    h = hashlib.sha1()
    st = path.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in sorted(filenames):
                try:
                    s = os.stat(os.path.join(dirpath, fn))
                except OSError:
                    continue
                h.update(f"{dirpath}/{fn}:{s.st_size}:{s.st_mtime_ns}\n".encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _cached(kind: str, key: tuple, seed: int, image_size, train_size, test_size, download: bool) -> Dataset:
    if kind == "shapes":
        return _build_shapes(seed, image_size, train_size, test_size)
    if kind == "digits":
        return _build_digits(seed, image_size, train_size, test_size)
    if kind == "torchvision":
        name, root = key
        return _build_torchvision(name, Path(root), download, seed, image_size, train_size, test_size)
    if kind == "folder":
        path, _fp, limits = key
        return _build_folder(Path(path), seed, image_size, train_size, test_size, limits)
    raise KeyError(kind)


def clear_cache() -> None:
    """Forget every cached data set (tests, or after files under data_root changed)."""
    _cached.cache_clear()
    _shapes_arrays.cache_clear()


# ----------------------------------------------------------------------------- public entry point


def load_dataset(
    name: str,
    data_root: str | Path = "data",
    seed: int = 0,
    *,
    download: bool = True,
    image_size: int | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    zip_limits: ZipLimits | None = None,
) -> Dataset:
    """Load a built-in data set by name (see DATASETS) or your own from a folder or .zip path.

    The train/test split is fixed by `seed`; `image_size` resizes to a square side;
    `train_size`/`test_size` take a seeded, class-balanced subset (for shapes they set
    how many images are drawn). `zip_limits` tightens or relaxes the safety limits for
    uploaded zips. Raises DatasetError with a one-line, actionable message.
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise DatasetError(f"dataset must be one of {', '.join(DATASETS)} or a folder/.zip path, got {name!r}")
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 8, _MAX_IMAGE_SIZE)
    train_size = _check_int("train_size", train_size, 1)
    test_size = _check_int("test_size", test_size, 1)

    raw = str(name).strip()
    key_name = _ALIASES.get(raw.lower(), raw.lower())
    if key_name in ("shapes", "digits"):
        ds = _cached(key_name, (), seed, image_size, train_size, test_size, False)
    elif key_name in DATASETS:
        root = Path(data_root).expanduser().resolve()
        ds = _cached("torchvision", (key_name, str(root)), seed, image_size, train_size, test_size, bool(download))
    else:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DatasetError(
                f"unknown dataset {raw!r}: choose one of {', '.join(DATASETS)}, or give the path of an image folder or .zip"
            )
        path = path.resolve()
        if path.is_file() and not path.name.lower().endswith(".zip"):
            raise DatasetError(f"{path.name} is a file but not a .zip: give a .zip or a folder with one sub-folder per class")
        limits = zip_limits or ZipLimits()
        try:
            fp = _fingerprint(path)
        except OSError as e:
            raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
        ds = _cached("folder", (str(path), fp, limits), seed, image_size, train_size, test_size, False)
    return ds.copy()
