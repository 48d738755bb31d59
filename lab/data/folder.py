"""Your own images: an ImageFolder-style directory or a .zip of one.

Layout: one sub-folder per class with images inside (nested folders are fine, as in
torchvision's ImageFolder). A zip may hold the class folders at its root or inside a
single top folder. Zips are read in memory through `lab.safezip`; nothing is extracted.
Files that are not images, and images that do not decode, are skipped and counted.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .. import safezip
from .base import DatasetError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# Pillow's own guard starts at ~89 M pixels; a 32x32 lab never needs more than this.
MAX_IMAGE_PIXELS = 40_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024
_EXAMPLES = 5


class _TooLarge(Exception):
    pass


def _is_junk(parts: tuple[str, ...]) -> bool:
    """macOS resource forks and hidden files are no one's training data."""
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


def decode_image(data: bytes, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode, flatten transparency onto white and resize to (size, size) RGB uint8 (H, W, 3).

    The pixel count is checked from the header before any pixel is decoded, which is
    what defeats a decompression bomb (a tiny PNG that claims 100k x 100k pixels).
    """
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise _TooLarge(str(e)) from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise _TooLarge(f"{w}x{h} pixels")
        if w < 1 or h < 1:
            raise ValueError("empty image")
        if im.format == "JPEG":
            # Lets libjpeg decode at 1/2..1/8 scale when the target is small.
            im.draft("RGB", (size, size))
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(bg, rgba).convert("RGB")
        elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # 16-bit and float greys: stretch to bytes instead of letting convert() clip.
            a = np.asarray(im, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
            rgb = Image.fromarray(a.round().astype(np.uint8), "L").convert("RGB")
        else:
            rgb = im.convert("RGB")
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _find_class_root(files: list[tuple[str, ...]], dirs: set[tuple[str, ...]]) -> tuple[str, ...]:
    """Descend through single wrapper folders (`data.zip/my_set/cat/...`) to the class folders."""
    prefix: tuple[str, ...] = ()
    while True:
        depth = len(prefix)
        subdirs = {d[depth] for d in dirs if len(d) > depth and d[:depth] == prefix}
        here = [f for f in files if len(f) == depth + 1 and f[:depth] == prefix]
        if len(subdirs) != 1 or any(Path(f[-1]).suffix.lower() in IMAGE_EXTENSIONS for f in here):
            return prefix
        only = prefix + (next(iter(subdirs)),)
        # A lone folder that itself holds folders is a wrapper; one that holds only files is a class.
        if not any(len(d) > len(only) and d[: len(only)] == only for d in dirs):
            return prefix
        prefix = only


def _read_file(p: Path) -> bytes:
    if p.stat().st_size > MAX_FILE_BYTES:
        raise _TooLarge(f"{p.stat().st_size:,} bytes")
    return p.read_bytes()


def _collect_dir(root: Path):
    files: list[tuple[tuple[str, ...], Callable[[], bytes]]] = []
    dirs: set[tuple[str, ...]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        dirnames[:] = sorted(d for d in dirnames if not _is_junk((d,)))
        for d in dirnames:
            dirs.add(rel + (d,))
        for fn in sorted(filenames):
            files.append((rel + (fn,), lambda p=Path(dirpath) / fn: _read_file(p)))
    return files, dirs


def _collect_zip(z: safezip.SafeZip):
    files = []
    dirs: set[tuple[str, ...]] = set()
    names = [(z.name(info), info) for info in z.members] + [(d, None) for d in z.report.dirs]
    for name, info in names:
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if not parts:
            continue
        if info is None:
            dirs.update(parts[:i] for i in range(1, len(parts) + 1))
            continue
        files.append((parts, lambda info=info: z.read(info)))
        dirs.update(parts[:i] for i in range(1, len(parts)))
    return files, dirs


def load_image_folder(
    path: str | Path,
    image_size: int = 32,
    limits: safezip.ZipLimits | None = None,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
):
    """Returns (x uint8 (N,C,S,S), y int64 (N,), classes, report) for a folder or .zip.

    C is 1 when every image is grey, else 3. Reading a zip happens inside one pass
    (the archive stays open while its members are decoded).
    """
    import torch

    path = Path(path)
    is_zip = path.is_file()
    report: dict = {
        "source": str(path),
        "format": "zip" if is_zip else "folder",
        "skipped_non_images": 0,
        "skipped_corrupt": 0,
        "skipped_too_large": 0,
        "skipped_outside_classes": 0,
    }
    examples: dict[str, list[str]] = {"non_images": [], "corrupt": [], "too_large": []}

    def note(kind: str, name: str):
        report["skipped_" + kind] += 1
        if len(examples[kind]) < _EXAMPLES:
            examples[kind].append(name)

    images: list[np.ndarray] = []
    labels: list[int] = []
    z = None
    try:
        if is_zip:
            z = safezip.SafeZip(path, limits)
            files, dirs = _collect_zip(z)
        else:
            files, dirs = _collect_dir(path)
        # Sorted, so a folder and its zip give identical tensors whatever the archive order.
        files = sorted(((p, r) for p, r in files if not _is_junk(p)), key=lambda f: f[0])
        dirs = {d for d in dirs if not _is_junk(d)}
        prefix = _find_class_root([p for p, _ in files], dirs)
        depth = len(prefix)
        classes = sorted({d[depth] for d in dirs if len(d) > depth and d[:depth] == prefix})
        shown = "/".join((path.name,) + prefix)
        if not classes:
            raise DatasetError(
                f"no class folders in {shown}: put the images in one sub-folder per class "
                f"(e.g. {shown}/cat/1.png, {shown}/dog/2.png)"
            )
        if len(classes) < 2:
            raise DatasetError(
                f"only one class folder ({classes[0]!r}) in {shown}: a classifier needs at least two, one sub-folder each"
            )
        index = {c: i for i, c in enumerate(classes)}
        per_class_files = [0] * len(classes)
        for parts, reader in files:
            if parts[:depth] != prefix:
                continue  # outside the class root; only possible for stray files beside a wrapper folder
            if len(parts) == depth + 1:
                report["skipped_outside_classes"] += 1
                continue
            label = index[parts[depth]]
            per_class_files[label] += 1
            name = "/".join(parts)
            if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
                note("non_images", name)
                continue
            try:
                data = reader()
                arr = decode_image(data, image_size, max_image_pixels)
            except safezip.UnsafeZipError:
                raise
            except _TooLarge:
                note("too_large", name)
                continue
            except Exception:  # noqa: BLE001 - any decoder or zip member failure means "corrupt"
                note("corrupt", name)
                continue
            images.append(arr)
            labels.append(label)
    except safezip.UnsafeZipError as e:
        raise DatasetError(f"{path.name}: {e}") from None
    finally:
        if z is not None:
            z.close()

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        c = empty[0]
        seen = per_class_files[index[c]]
        extra = f" ({seen} files there, none a readable image)" if seen else ""
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DatasetError(f"class folder {c!r}{more} in {shown} has no images{extra}: add images or remove the folder")

    x = np.stack(images)  # (N, S, S, 3)
    grey = bool((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all())
    xt = torch.from_numpy(x[..., :1] if grey else x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if z is not None:
        report["skipped_unsafe"] = len(z.report.unsafe)
        if z.report.unsafe:
            examples["unsafe"] = z.report.unsafe[:_EXAMPLES]
    report["examples"] = {k: v for k, v in examples.items() if v}
    report["per_class"] = {c: int(n) for c, n in zip(classes, counts)}
    return xt, y, classes, report
