"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, in torchvision's own layout under data_root.

torchvision does the reading; this module makes the failure modes readable. It looks
before it leaps (files present? checksums right? archive complete?) so that a missing,
truncated or corrupt download ends in one sentence naming the files and the folder,
never in a traceback from deep inside a reader.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .base import DatasetError

MNIST_CLASSES = [str(i) for i in range(10)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _tv():
    import torchvision.datasets as tvd

    return tvd


# ---------------------------------------------------------------- MNIST family


def _check_idx(path: Path, ndim: int) -> int:
    """Validate an idx file's header against its length; returns the item count."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != ndim:
        raise ValueError("not an idx file of unsigned bytes")
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if size != expected:
        raise ValueError(f"{size} bytes where the header promises {expected}")
    return dims[0]


def _gunzip(src: Path, dst: Path) -> None:
    """Decompress a local .gz next to itself (what torchvision does after a download), atomically."""
    tmp = dst.with_name(dst.name + ".part")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        os.replace(tmp, dst)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"{src} is truncated or corrupt ({_first_line(e)}): delete it and download it again"
        ) from None


def _load_mnist_like(cls, name: str, root: Path, download: bool):
    raw = root / cls.__name__ / "raw"
    files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    processed = root / cls.__name__ / "processed"
    legacy = all((processed / f).is_file() for f in (cls.training_file, cls.test_file))

    if not legacy:
        partial: list[str] = []  # files a cut-off download left behind, deleted to fetch again
        for f in files:
            if not (raw / f).is_file() and (raw / (f + ".gz")).is_file():
                try:
                    _gunzip(raw / (f + ".gz"), raw / f)
                except DatasetError:
                    if not download:
                        raise
                    (raw / (f + ".gz")).unlink(missing_ok=True)
                    partial.append(f + ".gz")
            elif download and (raw / f).is_file():
                try:
                    _check_idx(raw / f, 3 if "images" in f else 1)
                except (OSError, ValueError):
                    for bad in (raw / f, raw / (f + ".gz")):
                        bad.unlink(missing_ok=True)
                    partial.append(f)
        missing = [f for f in files if not (raw / f).is_file()]
        if missing and download:
            try:
                cls(str(root), train=True, download=True)
            except Exception as e:  # noqa: BLE001 - any failure here means "no usable download"
                missing = [f for f in files if not (raw / f).is_file()]
                reason = _first_line(e)
                where = (f"{', '.join(partial)} in {raw}/ was truncated or corrupt (deleted) and "
                         f"could not be downloaded again" if partial else
                         f"{name} is not under {root}/ and could not be downloaded")
                raise DatasetError(
                    f"{where} (offline? {reason}): "
                    f"put {', '.join(missing)} (or the same names with .gz) in {raw}/"
                ) from None
            missing = [f for f in files if not (raw / f).is_file()]
        if missing:
            raise DatasetError(
                f"{name} is not under {root}/ and downloads are off: "
                f"put {', '.join(missing)} (or the same names with .gz) in {raw}/"
            )
        counts = {}
        for f in files:
            try:
                counts[f] = _check_idx(raw / f, 3 if "images" in f else 1)
            except (OSError, ValueError) as e:
                raise DatasetError(
                    f"{raw / f} is truncated or corrupt ({e}): delete it (and its .gz) and download again"
                ) from None
        for split in ("train", "t10k"):
            ni, nl = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
            if ni != nl:
                raise DatasetError(
                    f"{raw}/{split}-images-idx3-ubyte has {ni} images but {split}-labels-idx1-ubyte has {nl} labels: "
                    "the files do not belong together; download them again"
                )

    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except Exception as e:  # noqa: BLE001 - the reader's asserts and RuntimeErrors alike
        raise DatasetError(f"{name} under {root}/ could not be read ({_first_line(e)}): delete it and download again") from None

    def conv(ds):
        x = torch.as_tensor(ds.data).to(torch.uint8).unsqueeze(1).contiguous()
        y = torch.as_tensor(ds.targets).to(torch.int64).contiguous()
        return x, y

    xtr, ytr = conv(train)
    xte, yte = conv(test)
    classes = MNIST_CLASSES if cls.__name__ == "MNIST" else list(cls.classes)
    for y, split in ((ytr, "train"), (yte, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise DatasetError(f"{name} {split} labels run outside 0..{len(classes) - 1}: the files are corrupt; download again")
    return xtr, ytr, xte, yte, classes, {"source": str(raw if not legacy else processed)}


# ---------------------------------------------------------------- CIFAR-10


def _load_cifar10(name: str, root: Path, download: bool):
    tvd = _tv()
    from torchvision.datasets.utils import check_integrity, extract_archive

    cls = tvd.CIFAR10
    folder = root / cls.base_folder
    archive = root / cls.filename
    members = [(f, md5) for f, md5 in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]

    def bad_members():
        return [f for f, md5 in members if not check_integrity(str(folder / f), md5)]

    bad = bad_members()
    archive_ok = None
    if bad and archive.is_file():
        archive_ok = check_integrity(str(archive), cls.tgz_md5)
        if archive_ok:
            try:
                extract_archive(str(archive), str(root))
            except Exception as e:  # noqa: BLE001
                raise DatasetError(f"{archive} could not be extracted ({_first_line(e)}): delete it and download again") from None
            bad = bad_members()

    download_error = None
    if bad and download:
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001
            download_error = _first_line(e)
        bad = bad_members()

    if bad:
        present_bad = [f for f in bad if (folder / f).is_file()]
        how = f"could not be downloaded (offline? {download_error})" if download_error else "downloads are off"
        if download and not download_error:
            how = "a download did not fix it"
        if archive.is_file() and not check_integrity(str(archive), cls.tgz_md5):
            raise DatasetError(
                f"{archive} is incomplete or corrupt (checksum mismatch) and {how}: delete it and put a complete "
                f"{cls.filename} (or the extracted {cls.base_folder}/) in {root}/"
            )
        if present_bad:
            raise DatasetError(
                f"{folder}/ holds corrupt or partial files ({', '.join(present_bad)}) and {how}: delete {folder}/ and put "
                f"{cls.filename} (or a complete {cls.base_folder}/) in {root}/"
            )
        raise DatasetError(
            f"{name} is not under {root}/ and {how}: put {cls.filename} (or the extracted {cls.base_folder}/) in {root}/"
        )

    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{name} under {folder}/ could not be read ({_first_line(e)}): delete it and download again") from None

    def conv(ds):
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        if x.dtype != torch.uint8:
            raise DatasetError(f"{name} under {folder}/ holds {x.dtype} pixels, not bytes: download it again")
        return x, y

    xtr, ytr = conv(train)
    xte, yte = conv(test)
    return xtr, ytr, xte, yte, list(train.classes), {"source": str(folder)}


def load_torchvision(name: str, root: Path, download: bool):
    """Returns (train_x, train_y, test_x, test_y, classes, report) for one of the torchvision sets."""
    tvd = _tv()
    if name == "mnist":
        return _load_mnist_like(tvd.MNIST, name, root, download)
    if name == "fashion-mnist":
        return _load_mnist_like(tvd.FashionMNIST, name, root, download)
    if name == "cifar10":
        return _load_cifar10(name, root, download)
    raise KeyError(name)
