"""Runs on disk: one folder per training run, written atomically, read without pickle.

A run folder holds `spec.json`, `settings.json`, `metrics.jsonl` (one event a line),
`dataset.json` and `weights.safetensors` (the state_dict, BatchNorm buffers included), and
while it trains a checkpoint: `checkpoint.json` (lab/train/checkpoint.py's meta, naming its
tensors file) and `checkpoint-<step>.safetensors`.

A folder appears complete, by one rename of a hidden sibling `.tmp-<name>`, so a crash
never leaves half a run. A training run is written by a `RunWriter`: the folder appears at
its first save (the first epoch's end), and later saves replace its files one by one, each
through a temporary name renamed over the old (readers see the old file or the new, never
half of one; a full disk leaves the old). The checkpoint's tensors go to a file named by
step and `checkpoint.json` is renamed over its predecessor last, so it always names a
complete tensors file; the previous one is deleted only after. A writer holds a lock on the
folder (`.lock`, released by the OS however the process ends), so two processes never train
one run at once. `load_run` reads JSON and safetensors only: a weights file that is not
safetensors is refused, never unpickled.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import blocks

FILES = ("spec.json", "settings.json", "metrics.jsonl", "dataset.json", "weights.safetensors")
TMP_PREFIX = ".tmp-"
CHECKPOINT = "checkpoint.json"
CHECKPOINT_TENSORS = re.compile(r"^checkpoint-\d{8,}\.safetensors$")
LOCK = ".lock"


class RunError(ValueError):
    """A run folder that cannot be read; the message names the folder and the problem."""


@dataclass
class RunParts:
    """What a run folder is written from."""
    spec: dict
    settings: dict
    metrics: list[dict]
    model: nn.Module
    dataset_info: dict = field(default_factory=dict)

    @classmethod
    def from_trainer(cls, trainer: Any, load: dict | None = None) -> "RunParts":
        """The parts of a Trainer (its model as trained so far and its events). `load`: the
        sizes the data set was loaded with (train_size, test_size), kept in dataset.json so
        that a resumed run loads the very same images."""
        info = trainer.dataset.info()
        if load is not None:
            info["load"] = dict(load)
        return cls(spec=trainer.model.spec, settings=trainer.settings.to_dict(),
                   metrics=list(trainer.history), model=trainer.model, dataset_info=info)


@dataclass
class Run:
    """A run read back from disk; `model` has its weights loaded and is in eval mode."""
    path: Path
    spec: dict
    settings: dict
    metrics: list[dict]
    dataset_info: dict
    model: blocks.Network

    @property
    def end(self) -> dict | None:
        """The run's "end" event, if it got that far."""
        return next((e for e in reversed(self.metrics) if e.get("type") == "end"), None)


def slug(text: str, max_len: int = 40) -> str:
    """"ResNet-18 + CBAM" -> "resnet-18-cbam"."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s[:max_len].strip("-") or "network"


def run_name(spec_name: str) -> str:
    """Timestamp + slug + random suffix: sorts by time, unique, safe as a folder name."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(spec_name)}-{secrets.token_hex(3)}"


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: safetensors wants dense, unshared storage (channels_last is not).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _dump_metrics(path: Path, events: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps(event, allow_nan=False) + "\n")


def _dump_weights(path: Path, parts: "RunParts") -> None:
    save_file(_state_dict(parts.model), str(path),
              metadata={"format": "pt", "spec_name": str(parts.spec.get("name", ""))})


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through a temporary sibling renamed over it once complete and on disk:
    a reader sees the old file or the new one; a failure (a full disk) leaves the old."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{secrets.token_hex(3)}")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _free_name(root: Path, spec_name: str) -> str:
    for _ in range(100):
        name = run_name(spec_name)
        if not (root / name).exists() and not (root / f"{TMP_PREFIX}{name}").exists():
            return name
    raise RunError(f"could not find a free run name in {root}")  # pragma: no cover


def save_run(source: Any, root: str | Path = "runs") -> Path:
    """Write a run (a Trainer or RunParts) as a new folder under `root`; returns its path."""
    parts = source if isinstance(source, RunParts) else RunParts.from_trainer(source)
    return RunWriter(root, parts.spec.get("name", "network"), lock=False).save(parts)


class RunWriter:
    """Writes one run folder while its run trains (see the module docstring).

        writer = RunWriter("runs", "ResNet-18")        # a new run; or RunWriter.resume(path)
        writer.save(parts, trainer.checkpoint())        # at each epoch's end
        writer.save(parts)                              # at the end (weights as trained)
        writer.close()
    """

    def __init__(self, root: str | Path, spec_name: str = "network", *, path: str | Path | None = None,
                 lock: bool = True):
        if path is not None:
            self.path = Path(path)
            self.root = self.path.parent
        else:
            self.root = Path(root)
            self.root.mkdir(parents=True, exist_ok=True)
            self.path = self.root / _free_name(self.root, spec_name)
        self._lock: FileLock | None = None
        self._locking = lock

    @classmethod
    def resume(cls, path: str | Path) -> "RunWriter":
        """A writer for an existing run folder, locked against other writers."""
        writer = cls("", path=path)
        if not writer.path.is_dir():
            raise RunError(f"{writer.path} is not a run folder")
        writer._take_lock()
        return writer

    def _take_lock(self) -> None:
        lock = FileLock(str(self.path / LOCK), blocking=False)
        try:
            lock.acquire()
        except Timeout:
            raise RunError(f"{self.path} is being written by another process (a training that "
                           f"is still running); wait for it to end or stop it first") from None
        except OSError as e:
            raise RunError(f"{self.path} cannot be locked for writing ({e.strerror or e})") from None
        self._lock = lock

    def close(self) -> None:
        """Release the folder's lock (the OS releases it too if the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self, parts: "RunParts", checkpoint: Any = None) -> Path:
        """Write the run as it is now (and `checkpoint`, a lab.train.checkpoint.Checkpoint,
        if given); returns the folder. The first call makes the folder, by one rename."""
        if not self.path.exists():
            self._create(parts, checkpoint)
            return self.path
        if checkpoint is not None:
            self._write_checkpoint(self.path, checkpoint)
        _replace(self.path / "settings.json", lambda p: _dump(p, parts.settings))
        _replace(self.path / "weights.safetensors", lambda p: _dump_weights(p, parts))
        _replace(self.path / "metrics.jsonl", lambda p: _dump_metrics(p, parts.metrics))
        self._drop_stale_checkpoints()
        return self.path

    def _create(self, parts: "RunParts", checkpoint: Any) -> None:
        tmp = self.root / f"{TMP_PREFIX}{self.path.name}"
        tmp.mkdir(parents=True)
        try:
            _dump(tmp / "spec.json", parts.spec)
            _dump(tmp / "settings.json", parts.settings)
            _dump(tmp / "dataset.json", parts.dataset_info)
            _dump_metrics(tmp / "metrics.jsonl", parts.metrics)
            _dump_weights(tmp / "weights.safetensors", parts)
            if checkpoint is not None:
                self._write_checkpoint(tmp, checkpoint)
            for name in os.listdir(tmp):
                _fsync(tmp / name)
            os.replace(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self._locking:
            self._take_lock()

    @staticmethod
    def _write_checkpoint(folder: Path, checkpoint: Any) -> None:
        name = f"checkpoint-{checkpoint.step:08d}.safetensors"
        token = secrets.token_hex(8)
        _replace(folder / name, lambda p: save_file(checkpoint.tensors, str(p),
                                                    metadata={"format": "pt", "token": token}))
        # The commit point: from here on checkpoint.json names the new tensors.
        _replace(folder / CHECKPOINT, lambda p: _dump(p, {"tensors": name, "token": token,
                                                         **checkpoint.meta}))

    def _drop_stale_checkpoints(self) -> None:
        try:
            current = json.loads((self.path / CHECKPOINT).read_text(encoding="utf-8")).get("tensors")
        except (OSError, ValueError):
            return
        for entry in os.listdir(self.path):
            if CHECKPOINT_TENSORS.match(entry) and entry != current:
                with contextlib.suppress(OSError):
                    (self.path / entry).unlink()
        for entry in os.listdir(self.path):     # temporary files of a writer that died
            if entry.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    (self.path / entry).unlink()


def load_checkpoint(path: str | Path) -> Any:
    """The run folder's checkpoint (lab.train.checkpoint.Checkpoint), read without pickle;
    RunError (one line) when there is none or it cannot be read."""
    from lab.train.checkpoint import Checkpoint
    path = Path(path)
    if not (path / CHECKPOINT).exists():
        raise RunError(f"{path} has no checkpoint to resume from (it ended before its first "
                       f"epoch was complete, or was written before runs kept checkpoints)")
    meta = _read_json(path / CHECKPOINT)
    name = meta.pop("tensors", None) if isinstance(meta, dict) else None
    if not isinstance(name, str) or not CHECKPOINT_TENSORS.match(name):
        raise RunError(f"{path / CHECKPOINT} does not name a checkpoint file")
    tensors = load_weights(path / name)
    with safe_open(str(path / name), "pt") as f:
        token = (f.metadata() or {}).get("token")
    if token != meta.pop("token", None):
        raise RunError(f"{path / name} does not belong to {path / CHECKPOINT}")
    if not all(k in meta for k in ("epoch", "step", "progress", "optimizer", "events")):
        raise RunError(f"{path / CHECKPOINT} is missing part of the run's state")
    return Checkpoint(tensors, meta)


def read_run_json(path: Path) -> Any:
    """A run folder's JSON file; RunError (one line) if missing or unreadable."""
    return _read_json(path)


def read_run_metrics(path: Path) -> list[dict]:
    """A run folder's metrics.jsonl as events; RunError (one line) if missing or broken."""
    return _read_metrics(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path.parent} is not a complete run: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path} cannot be read as JSON: {e}") from None


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        raise RunError(f"{path.parent} is not a complete run: {path.name} is missing")
    events = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError as e:
                raise RunError(f"{path}, line {n}, is not JSON: {e}") from None
    return events


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (CPU); anything else raises RunError, unexecuted."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path.parent} is not a complete run: {path.name} is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0][:120]}); "
                       f"refusing to load it") from None


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Read a run folder: its JSON files and its weights, into an eval-mode Network."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run folder")
    spec = _read_json(path / "spec.json")
    settings = _read_json(path / "settings.json")
    dataset_info = _read_json(path / "dataset.json")
    metrics = _read_metrics(path / "metrics.jsonl")
    state = load_weights(path / "weights.safetensors")
    try:
        model = blocks.build(spec, device="cpu")
    except blocks.SpecError as e:
        raise RunError(f"{path / 'spec.json'} cannot be built: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RunError(f"{path / 'weights.safetensors'} does not fit its spec: "
                       f"{' '.join(str(e).split())[:300]}") from None
    return Run(path, model.spec, settings, metrics, dataset_info, model.to(device).eval())


def list_runs(root: str | Path = "runs") -> list[Path]:
    """Complete run folders under `root`, oldest first (names start with a timestamp)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "weights.safetensors").exists()
                  and (p / "spec.json").exists())


# ---------------------------------------------------------------- the runs folder

RUNS_ENV = "CONVSCOPE_RUNS_DIR"


def default_root() -> Path:
    """The runs folder the app and `lab train` share: $CONVSCOPE_RUNS_DIR, else ./runs."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


@dataclass(frozen=True)
class RunInfo:
    """One entry of a runs folder listing. `damaged` says why a folder cannot be opened
    ("" when it can); such entries carry only their path and name."""
    path: Path
    name: str                       # the folder's name (the run's id)
    network: str = ""
    dataset: str = ""
    accuracy: float | None = None   # best test accuracy
    date: float = 0.0               # when it was written (seconds since the epoch)
    status: str = ""                # completed | stopped | diverged | failed | running | interrupted
    epochs: float | None = None
    damaged: str = ""

    @property
    def label(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.date)) if self.date else "?"
        if self.damaged:
            return f"{self.name} · damaged: {self.damaged}"
        acc = "" if self.accuracy is None else f" · {100 * self.accuracy:.1f}%"
        return f"{self.name} · {self.network} · {self.dataset}{acc} · {self.status} · {when}"


def locked(path: Path) -> bool:
    """Whether a process is writing the run in `path` now (training it)."""
    if not (path / LOCK).exists():
        return False
    lock = FileLock(str(path / LOCK), blocking=False)
    try:
        lock.acquire()
    except (Timeout, OSError):
        return True
    lock.release()
    return False


def _weights_problem(path: Path, spec: dict) -> str:
    """Why weights.safetensors does not fit `spec` (names and shapes, read from the header
    only), or ""."""
    try:
        with safe_open(str(path / "weights.safetensors"), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        return "weights.safetensors is missing"
    except (SafetensorError, OSError, ValueError) as e:
        return f"weights.safetensors is not a valid safetensors file ({str(e).splitlines()[0][:80]})"
    try:
        model = blocks.build(spec, device="meta")
    except blocks.SpecError as e:
        return f"spec.json cannot be built ({e})"
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != shapes:
        bad = sorted(set(want) ^ set(shapes)) or [k for k in want if want[k] != shapes[k]]
        return f"weights.safetensors does not fit spec.json ({bad[0]})"
    return ""


# run_info results by folder, valid while its files' sizes and times stay the same: a listing
# of a large folder re-reads only what changed (the app lists on every tab switch).
_INFO_CACHE: dict[str, tuple[tuple, RunInfo]] = {}
_INFO_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple:
    out = []
    for name in FILES:
        try:
            st = (path / name).stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


def run_info(path: str | Path) -> RunInfo:
    """What a listing shows of one run folder; a damaged one comes back with the reason."""
    path = Path(path)
    stamp = _stamp(path)
    with _INFO_LOCK:
        hit = _INFO_CACHE.get(str(path))
    if hit is not None and hit[0] == stamp:
        info = hit[1]
    else:
        info = _read_info(path)
        with _INFO_LOCK:
            if len(_INFO_CACHE) > 4096:
                _INFO_CACHE.clear()
            _INFO_CACHE[str(path)] = (stamp, info)
    if not info.damaged and info.status in ("running", "interrupted"):
        info = dataclasses.replace(info, status="running" if locked(path) else "interrupted")
    return info


def _read_info(path: Path) -> RunInfo:
    try:
        spec = _read_json(path / "spec.json")
        settings = _read_json(path / "settings.json")
        info = _read_json(path / "dataset.json")
        metrics = _read_metrics(path / "metrics.jsonl")
        if not all(isinstance(x, dict) for x in (spec, settings, info)):
            raise RunError("spec.json, settings.json and dataset.json must each hold a JSON object")
        problem = _weights_problem(path, spec)
        if problem:
            raise RunError(problem)
    except RunError as e:
        reason = str(e).replace(str(path), "").strip(" /:") or "unreadable"
        return RunInfo(path, path.name, damaged=reason[:200])
    events = [e for e in metrics if isinstance(e, dict)]
    end = next((e for e in reversed(events) if e.get("type") == "end"), None)
    accs = [e.get("test_acc") for e in events if e.get("type") in ("epoch", "end")]
    accs = [a for a in accs if isinstance(a, (int, float)) and not isinstance(a, bool)]
    epochs = [e.get("epoch") for e in events if e.get("type") == "epoch"]
    if end is not None:
        status, done = str(end.get("status", "ended")), end.get("epochs")
    else:
        status = "running" if locked(path) else "interrupted"
        done = epochs[-1] if epochs else 0
    try:
        date = (path / "spec.json").stat().st_mtime
    except OSError:
        date = 0.0
    return RunInfo(path, path.name, str(spec.get("name", "network")),
                   str(settings.get("dataset") or info.get("name", "?")),
                   max(accs) if accs else None, date, status,
                   done if isinstance(done, (int, float)) else None)


def scan_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run folder under `root` (default: `default_root()`), newest first; damaged ones
    are included with `damaged` set (callers list them as such and skip them). Hidden
    entries (temporary folders of writers at work) are not runs."""
    root = default_root() if root is None else Path(root)
    try:
        entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    infos = [run_info(p) for p in entries]
    return sorted(infos, key=lambda r: (r.date, r.name), reverse=True)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,79}$")


def _run_in(root: Path, name: str) -> Path:
    if not isinstance(name, str) or not _NAME.match(name) or name.strip() != name or ".." in name:
        raise RunError(f"{str(name)[:40]!r} is not a run name (letters, digits, space, . _ + -; "
                       f"up to 80, not starting with a dot)")
    return root / name


def rename_run(root: str | Path, name: str, new_name: str) -> Path:
    """Rename the run `name` under `root` to `new_name`; returns the new path."""
    root = Path(root)
    src, dst = _run_in(root, name), _run_in(root, new_name.strip() if isinstance(new_name, str) else new_name)
    if not src.is_dir():
        raise RunError(f"there is no run {name!r}")
    if dst.exists():
        raise RunError(f"a run named {new_name.strip()!r} exists already")
    if locked(src):
        raise RunError(f"{name} is still training; rename it when it has ended")
    try:
        os.rename(src, dst)
    except OSError as e:
        raise RunError(f"{name} could not be renamed ({e.strerror or e})") from None
    return dst


def delete_run(root: str | Path, name: str) -> None:
    """Delete the run `name` under `root`: first renamed to a hidden name (it leaves the
    listing at once, whole), then removed."""
    root = Path(root)
    src = _run_in(root, name)
    if not src.is_dir():
        raise RunError(f"there is no run {name!r}")
    if locked(src):
        raise RunError(f"{name} is still training; stop it before deleting it")
    gone = root / f"{TMP_PREFIX}deleted-{secrets.token_hex(4)}-{name}"
    try:
        os.rename(src, gone)
    except OSError as e:
        raise RunError(f"{name} could not be deleted ({e.strerror or e})") from None
    shutil.rmtree(gone, ignore_errors=True)
