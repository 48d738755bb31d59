"""Reading an untrusted .zip into memory, member by member, without ever extracting it.

Nothing is written to disk, so path traversal cannot escape anywhere; unsafe names
(absolute, `..`, symlinks) are still skipped and counted so that the user hears about
them. Resource limits guard the reader itself:

- the number of entries and the total *declared* size are checked before reading;
- a big member that claims to expand more than `max_ratio`:1 refuses the archive
  (the classic zip bomb, and the overlapping-member kind, whose members each claim
  a huge ratio);
- while reading, the *actual* bytes are counted, per member against its declared size
  and in total against `max_total_bytes`, so a lying header cannot push past them.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class UnsafeZipError(ValueError):
    """The archive breaks a safety limit; the message says which and by how much."""


@dataclass(frozen=True)
class ZipLimits:
    max_total_bytes: int = 500 * 1024 * 1024
    max_files: int = 50_000
    max_ratio: float = 200.0
    # Small members may compress as well as they like: a 40 kB blank PNG is no bomb.
    ratio_min_bytes: int = 1024 * 1024


@dataclass
class ZipReport:
    unsafe: list[str] = field(default_factory=list)  # names skipped as absolute, `..` or symlink
    dirs: list[str] = field(default_factory=list)  # safe directory entries (empty folders show up only here)
    bytes_read: int = 0


_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member must not be used, or None when its name and type are harmless."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in path"
    if "\x00" in name:
        return "NUL in name"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def check_archive(zf: zipfile.ZipFile, limits: ZipLimits, report: ZipReport) -> list[zipfile.ZipInfo]:
    """Apply the up-front limits; returns the regular, safely named members in archive order."""
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise UnsafeZipError(f"the zip holds {len(infos):,} entries, more than the limit of {limits.max_files:,}")
    members = []
    for info in infos:
        reason = unsafe_reason(info)
        if info.is_dir():
            if not reason:
                report.dirs.append(info.filename.replace("\\", "/"))
            continue
        if reason:
            report.unsafe.append(f"{info.filename} ({reason})")
            continue
        members.append(info)
    declared = sum(i.file_size for i in members)
    if declared > limits.max_total_bytes:
        raise UnsafeZipError(
            f"the zip would expand to {_mb(declared)}, more than the limit of {_mb(limits.max_total_bytes)}"
        )
    for info in members:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise UnsafeZipError(
                f"member {info.filename!r} expands {ratio:,.0f}:1 ({_mb(info.file_size)}), more than the "
                f"{limits.max_ratio:.0f}:1 limit: this looks like a zip bomb, so the archive is refused"
            )
    return members


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ZipLimits, report: ZipReport) -> bytes:
    """The member's bytes, counting what is actually inflated rather than trusting the header.

    Raises UnsafeZipError past a limit; zipfile's own errors (bad CRC, encryption,
    unknown compression) pass through for the caller to count as a corrupt member.
    """
    chunks = []
    n = 0
    with zf.open(info) as f:
        while True:
            # Ask for one byte more than declared, so an overlong member shows itself.
            chunk = f.read(min(1 << 20, info.file_size - n + 1))
            if not chunk:
                break
            n += len(chunk)
            report.bytes_read += len(chunk)
            if n > info.file_size:
                raise UnsafeZipError(
                    f"member {info.filename!r} inflates past its declared {info.file_size:,} bytes: the header lies, "
                    "so the archive is refused"
                )
            if report.bytes_read > limits.max_total_bytes:
                raise UnsafeZipError(f"the zip expands past the limit of {_mb(limits.max_total_bytes)}")
            chunks.append(chunk)
    return b"".join(chunks)


class SafeZip:
    """An open archive whose safe members can be listed and read under the limits.

        with SafeZip(path) as z:
            for info in z.members:
                data = z.read(info)

    Opening a file that is not a zip raises UnsafeZipError too, so callers handle one error type.
    """

    def __init__(self, path: str | Path, limits: ZipLimits | None = None):
        self.limits = limits or ZipLimits()
        self.report = ZipReport()
        try:
            self._zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise UnsafeZipError(f"not a readable zip file ({e})") from None
        try:
            self.members = check_archive(self._zf, self.limits, self.report)
        except BaseException:
            self._zf.close()
            raise

    @staticmethod
    def name(info: zipfile.ZipInfo) -> str:
        return info.filename.replace("\\", "/")

    def read(self, info: zipfile.ZipInfo) -> bytes:
        return read_member(self._zf, info, self.limits, self.report)

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> "SafeZip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
