"""One browser session's runtime state: its finished runs, its data sets, its training.

The app keeps one `Session` per visitor in a `gr.State`, so two visitors never see each
other's runs. A session owns a temporary folder (`<root>/s-<session key>`) holding its run
folders; `close()` — called from `demo.unload` (through `close_sessions`, as soon as the
tab is closed) and again from the state's delete callback (which Gradio runs an hour
later) — stops its training, drops its runs and data sets and removes the folder.

Training runs in a worker thread that records the finished run into the session itself,
so the run is kept (with the model as trained so far) however the UI's generator ends:
completed, stopped by Stop, or cancelled by Gradio. `start_training` is that generator's
core: it polls the worker and yields a `TrainUpdate` at least every `poll` seconds.
The network is trained by `train_events`, a module-level generator of plain dicts, which
is what ZeroGPU needs (it pickles arguments and results across processes); Stop reaches
it through a file, which works across that process boundary too.
"""
from __future__ import annotations

import contextvars
import errno
import functools
import itertools
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lab.serve import zerogpu
from lab.serve.limits import Limits, LimitError, check_epochs, check_spec_limits

ROOT_ENV = "CONVSCOPE_SESSION_ROOT"
TRAIN_SIZE_ENV = "CONVSCOPE_SHAPES_TRAIN_SIZE"
TEST_SIZE_ENV = "CONVSCOPE_SHAPES_TEST_SIZE"
STOP_FILE = "STOP"
GALLERY_SIZE = 24
# Input shape and number of classes of the built-in data sets, known without loading them
# (so the Build tab can follow the Train tab's choice at once, even offline).
BUILTIN_META = {"shapes": ((3, 32, 32), 10), "digits": ((1, 28, 28), 10),
                "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
                "cifar10": ((3, 32, 32), 10)}


class SessionError(ValueError):
    """A request the session refuses; the message is one line for the user."""


def session_root() -> Path:
    """Where session folders live: $CONVSCOPE_SESSION_ROOT or <tmp>/convscope-sessions."""
    return Path(os.environ.get(ROOT_ENV) or Path(tempfile.gettempdir()) / "convscope-sessions")


def _safe_key(key: str | None) -> str:
    key = re.sub(r"[^A-Za-z0-9_-]", "", str(key or ""))[:64]
    return key or f"anon{os.getpid()}-{next(_counter)}-{os.urandom(4).hex()}"


_counter = itertools.count(1)  # only makes anonymous keys unique; holds no user data


def remove_session_dir(key: str, root: str | Path | None = None) -> bool:
    """Remove the folder of session `key` (the app's unload hook); True if it existed.
    A training of that session sees its folder gone and stops after the current batch."""
    path = Path(root or session_root()) / f"s-{_safe_key(key)}"
    existed = path.is_dir()
    shutil.rmtree(path, ignore_errors=True)
    return existed


# Every open Session, weakly: lets `close_sessions` release a closed tab's runs and data at
# once (Gradio keeps a closed tab's gr.State for an hour). Holds no session alive.
_LIVE: "weakref.WeakSet[Session]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def close_sessions(key: str | None) -> int:
    """Close every open session of browser session `key` (the app's unload hook): its
    training stops after the current batch, its runs and data sets are dropped and its
    folder is removed. Returns how many were closed."""
    if not key:
        return 0
    safe = _safe_key(key)
    with _LIVE_LOCK:
        found = [s for s in list(_LIVE) if s.key == safe and not s.closed]
    for s in found:
        s.close()
    return len(found)


def open_sessions() -> list["Session"]:
    """The sessions whose `close()` has not finished (for tests and monitoring)."""
    with _LIVE_LOCK:
        return list(_LIVE)


def download_allowed() -> bool:
    """Whether torchvision data sets may be downloaded ($CONVSCOPE_DOWNLOAD, default yes)."""
    return os.environ.get("CONVSCOPE_DOWNLOAD", "1").strip().lower() not in ("0", "no", "false")


def _env_size(name: str, dataset: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if dataset == "shapes" and raw.isdigit() and int(raw) > 0:
        return int(raw)
    return None


def default_train_size(dataset: str) -> int | None:
    """$CONVSCOPE_SHAPES_TRAIN_SIZE for `shapes` (tests and demos use a small one)."""
    return _env_size(TRAIN_SIZE_ENV, dataset)


def default_test_size(dataset: str) -> int | None:
    """$CONVSCOPE_SHAPES_TEST_SIZE for `shapes`."""
    return _env_size(TEST_SIZE_ENV, dataset)


# ---------------------------------------------------------------- runs

@dataclass
class RunRecord:
    """A finished (completed or stopped) run held by a session; `model` is on the CPU."""
    id: str
    spec: dict
    settings: dict
    events: list[dict]
    model: Any                    # blocks.Network, eval mode
    dataset_key: tuple
    dataset_info: dict
    classes: list[str]
    path: Path | None = None      # the run folder (None if it could not be written)
    save_error: str | None = None  # why the folder could not be written, for the user
    created: float = field(default_factory=time.time)
    cache: dict = field(default_factory=dict)  # derived numbers (e.g. energy-in-mask)

    @property
    def end(self) -> dict:
        return next((e for e in reversed(self.events) if e.get("type") == "end"), {})

    @property
    def start(self) -> dict:
        return next((e for e in self.events if e.get("type") == "start"), {})

    @property
    def status(self) -> str:
        return self.end.get("status", "unknown")

    @property
    def best_test_acc(self) -> float | None:
        accs = [e["test_acc"] for e in self.events if e.get("type") in EVALUATIONS
                and e.get("test_acc") is not None]
        end = self.end.get("test_acc")
        if end is not None:
            accs.append(end)
        return max(accs) if accs else None

    @property
    def images_per_sec(self) -> float | None:
        return self.end.get("images_per_sec")

    @property
    def label(self) -> str:
        acc = self.best_test_acc
        acc_text = "" if acc is None else f" · {100 * acc:.1f}%"
        return (f"{self.id} · {self.spec.get('name', 'network')} · "
                f"{self.settings.get('dataset', '?')}{acc_text}")


@dataclass
class TrainUpdate:
    """What the Train tab shows while a run goes on."""
    events: list[dict]            # every event so far (for the curves)
    new_events: bool              # whether `events` grew since the last update
    progress: float               # 0..1
    text: str                     # "epoch 1/3 · step 40/120 · 1,234 images/s · ETA 0:12"
    done: bool = False
    status: str = "running"       # running | completed | stopped | failed | diverged | error
    message: str = ""
    run_id: str | None = None
    device_name: str = ""
    warning: str = ""             # something the user should hear about (run not saved)


EVALUATIONS = ("epoch", "eval")   # event types that carry a test accuracy


def last_evaluation(events: list[dict]) -> dict | None:
    """The latest evaluation: an "epoch" event, or the "eval" event of a run stopped inside
    an epoch — the one source of a run's test accuracy for every text the app shows."""
    return next((e for e in reversed(events) if e.get("type") in EVALUATIONS), None)


def final_test_acc(events: list[dict]) -> float | None:
    """The run's test accuracy: that of its latest evaluation (None before the first)."""
    last = last_evaluation(events)
    return None if last is None else last.get("test_acc")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_text(events: list[dict], epochs: int) -> tuple[float, str]:
    """(fraction done, one line) from the events so far."""
    start = next((e for e in events if e.get("type") == "start"), None)
    if start is None:
        return 0.0, "loading data and building the network…"
    step = next((e for e in reversed(events) if e.get("type") == "step"), None)
    end = next((e for e in reversed(events) if e.get("type") == "end"), None)
    total = start.get("total_steps", 1)
    done_steps = step["step"] if step else 0
    last = last_evaluation(events)
    if last is not None and last.get("type") == "eval":     # stopped between two reports
        done_steps = max(done_steps, last.get("step", 0))
    frac = 1.0 if end and end.get("status") == "completed" else done_steps / max(1, total)
    parts = [f"{start.get('device_name', '')}"]
    cur_epoch = min(epochs, int(done_steps // max(1, start.get("steps_per_epoch", 1))) + 1)
    parts.append(f"epoch {cur_epoch}/{epochs} · step {done_steps}/{total} ({100 * frac:.0f}%)")
    if step:
        parts.append(f"{step['images_per_sec']:,.0f} images/s · ETA {_clock(step.get('eta_s'))}")
        parts.append(f"loss {step['loss']:.4f}")
    acc = final_test_acc(events)
    if acc is not None:
        parts.append(f"test acc {100 * acc:.1f}%")
    return frac, " · ".join(p for p in parts if p)


# ---------------------------------------------------------------- the training process

def _stop_requested(stop_file: str) -> bool:
    return os.path.exists(stop_file) or not os.path.isdir(os.path.dirname(stop_file))


def train_events(spec: dict, settings: dict, stop_file: str, dataset: Any = None,
                 train_size: int | None = None, test_size: int | None = None,
                 watch: dict | None = None) -> Iterator[dict]:
    """Train `spec` and yield the trainer's events (plain dicts), then one
    {"type": "weights", "state": {name: CPU tensor}, "spec": built spec}. With `watch`
    ({"view", "index"[, "layer"]}) a "watch" snapshot of that view of test image `index`
    follows every epoch event (lab/watch.py; kept in the run's events).

    Module-level and plain-data in, plain-data out, so it can run under `spaces.GPU` in
    another process. The run stops after the current batch once `stop_file` exists or its
    folder is removed.
    """
    from lab.datasets import load_dataset
    from lab.train.trainer import Trainer, TrainSettings

    s = TrainSettings.from_dict(settings)
    if dataset is None:
        dataset = load_dataset(s.dataset, s.data_root, seed=s.seed, download=download_allowed(),
                               train_size=train_size, test_size=test_size)
    trainer = Trainer(spec, s, dataset)
    watcher = make_watcher(watch, dataset) if watch else None
    for event in trainer.run():
        if not trainer.stopping and _stop_requested(stop_file):
            trainer.stop()
        yield event
        snap = watcher.on_event(event, trainer) if watcher is not None else None
        if snap is not None:
            trainer.history.append(snap)
            yield snap
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in trainer.model.state_dict().items()}
    yield {"type": "weights", "state": state, "spec": trainer.model.spec}


def make_watcher(watch: dict, dataset: Any) -> Any:
    """A lab.watch.Watcher computing visual.watch_snapshot of `watch["view"]` for test image
    `watch["index"]` (its true class for Grad-CAM)."""
    from lab.watch import Watcher
    from visual.watch import watch_snapshot
    index, view, layer = int(watch.get("index", 0)), str(watch["view"]), watch.get("layer")
    if not 0 <= index < len(dataset.test_y):
        raise SessionError(f"the watched image must be a test image from 0 to "
                           f"{len(dataset.test_y) - 1}, got {index}")
    x = dataset.normalize(dataset.test_x[index:index + 1])
    target = int(dataset.test_y[index])

    def compute(model: Any) -> dict:
        return watch_snapshot(model, x.to(next(model.parameters()).device), view, layer, target)
    return Watcher(compute, index=index)


def _gpu_duration(spec: dict, settings: dict, *args: Any, **kwargs: Any) -> int:
    return zerogpu.duration_for(int(settings.get("epochs", 1)))


train_events_gpu = zerogpu.gpu(_gpu_duration)(train_events)


class _Training:
    """One run in progress: its worker thread, its event queue and its stop file."""

    def __init__(self, stop_file: Path, epochs: int):
        self.stop_file = stop_file
        self.epochs = epochs
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.done = threading.Event()
        self.run_id: str | None = None
        self.error: str | None = None
        self.save_error: str | None = None

    def request_stop(self) -> None:
        try:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.touch()
        except OSError:
            pass  # the folder is gone: the trainer stops on that as well


# ---------------------------------------------------------------- the session

class Session:
    """Per-visitor state. Thread-safe: the training worker records runs into it."""

    def __init__(self, key: str | None = None, root: str | Path | None = None,
                 limits: Limits | None = None):
        self.key = _safe_key(key)
        self.root = Path(root or session_root())
        self.limits = limits or Limits.from_env()
        self.runs: "OrderedDict[str, RunRecord]" = OrderedDict()
        self._datasets: "OrderedDict[tuple, Any]" = OrderedDict()
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._training: _Training | None = None
        self.closed = False
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- folder

    @property
    def dir(self) -> Path:
        """The session's folder, created on first use."""
        path = self.root / f"s-{self.key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        """Stop a training, drop runs and data, remove the folder (idempotent)."""
        with self._lock:
            self.closed = True
            if self._training is not None:
                self._training.request_stop()
            self.runs.clear()
            self._datasets.clear()
        shutil.rmtree(self.root / f"s-{self.key}", ignore_errors=True)
        _return_memory()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # -- data sets

    def dataset(self, name: str, seed: int = 0, train_size: int | None = None,
                test_size: int | None = None, data_root: str = "data") -> Any:
        """A data set, cached per session (the last two used)."""
        from lab.datasets import load_dataset
        key = (name, seed, train_size, test_size, data_root)
        with self._lock:
            if key in self._datasets:
                self._datasets.move_to_end(key)
                return self._datasets[key]
        ds = load_dataset(name, data_root, seed=seed, download=download_allowed(), train_size=train_size,
                          test_size=test_size)
        with self._lock:
            self._datasets[key] = ds
            while len(self._datasets) > 2:
                self._datasets.popitem(last=False)
        return ds

    def dataset_for(self, run: RunRecord) -> Any:
        name, seed, train_size, test_size, data_root = run.dataset_key
        return self.dataset(name, seed, train_size, test_size, data_root)

    # -- runs

    def run(self, run_id: str | None) -> RunRecord:
        """A finished run by id (None: the latest); SessionError if there is none."""
        with self._lock:
            if not self.runs:
                raise SessionError("no finished run yet: train a network on the Train tab first")
            if run_id is None or run_id == "":
                return next(reversed(self.runs.values()))
            run_id = str(run_id).split(" · ", 1)[0]
            if run_id not in self.runs:
                raise SessionError(f"there is no run '{run_id[:40]}' in this session")
            return self.runs[run_id]

    def run_choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs, newest first."""
        with self._lock:
            return [(r.label, r.id) for r in reversed(self.runs.values())]

    def add_run(self, record_parts: dict) -> RunRecord:
        """Record a finished run (saving its folder under the session dir); the oldest runs
        beyond the limit are dropped."""
        from lab.runs import RunParts, save_run
        with self._lock:
            run_id = f"run-{next(self._ids)}"
        rec = RunRecord(id=run_id, **record_parts)
        if not self.closed:
            try:
                rec.path = save_run(RunParts(rec.spec, rec.settings, rec.events, rec.model,
                                             rec.dataset_info), self.dir / "runs")
            except (OSError, ValueError) as e:
                # save_run leaves no half-written folder; the run stays usable in memory.
                rec.path = None
                rec.save_error = (f"{run_id} could not be saved to disk ({_os_reason(e)}); it is "
                                  f"kept in memory for this session, so export what you need")
        with self._lock:
            if self.closed:
                return rec
            self.runs[run_id] = rec
            while len(self.runs) > self.limits.max_runs:
                _, old = self.runs.popitem(last=False)
                if old.path is not None:
                    shutil.rmtree(old.path, ignore_errors=True)
        return rec

    def remove_run(self, run_id: str) -> None:
        with self._lock:
            rec = self.runs.pop(self.run(run_id).id)
        if rec.path is not None:
            shutil.rmtree(rec.path, ignore_errors=True)

    # -- training

    @property
    def training(self) -> bool:
        with self._lock:
            return self._training is not None and not self._training.done.is_set()

    def check_training_request(self, spec: dict, settings: Any, dataset: Any) -> dict:
        """The spec as it will be trained (input/classes from the data set), after the
        limit checks; raises LimitError, SpecError or SessionError."""
        from lab.train.trainer import prepare_spec
        if self.training:
            raise SessionError("a training is already running in this session; stop it first")
        check_epochs(settings.epochs, self.limits)
        prepared = prepare_spec(spec, dataset.input_shape, len(dataset.classes), settings.width)
        check_spec_limits(prepared, settings.batch_size, self.limits)
        return prepared

    def start_training(self, spec: dict, settings: Any, train_size: int | None = None,
                       test_size: int | None = None, poll: float = 0.25,
                       watch: dict | None = None) -> Iterator[TrainUpdate]:
        """Train in a worker thread; yield a TrainUpdate at least every `poll` seconds until
        the run ends. The run is recorded into the session by the worker, so it survives
        this generator being closed (which asks the run to stop). `watch`: see train_events."""
        if self.closed:
            raise SessionError("this session has ended; reload the page")
        if train_size is None:
            train_size = default_train_size(settings.dataset)
        if test_size is None:
            test_size = default_test_size(settings.dataset)
        ds = self.dataset(settings.dataset, settings.seed, train_size, test_size, settings.data_root)
        spec = self.check_training_request(spec, settings, ds)
        if watch:
            make_watcher(watch, ds)          # a wrong image index is refused before the run
        stop_file = self.dir / f"{STOP_FILE}-{os.urandom(4).hex()}"
        job = _Training(stop_file, settings.epochs)
        with self._lock:
            if self.training:
                raise SessionError("a training is already running in this session; stop it first")
            self._training = job
        key = (settings.dataset, settings.seed, train_size, test_size, settings.data_root)
        ctx = contextvars.copy_context()  # ZeroGPU reads the request from the context
        job.thread = threading.Thread(
            target=ctx.run, args=(self._worker, job, spec, settings.to_dict(), ds, key, watch),
            name=f"convscope-train-{self.key[:8]}", daemon=True)
        job.thread.start()
        return self._updates(job, poll)

    def _worker(self, job: _Training, spec: dict, settings: dict, ds: Any, key: tuple,
                watch: dict | None = None) -> None:
        events: list[dict] = []
        weights = None
        try:
            if zerogpu.on_zerogpu():
                stream = train_events_gpu(spec, settings, str(job.stop_file), None,
                                          key[2], key[3], watch)
            else:
                extra = {"watch": watch} if watch else {}
                stream = train_events(spec, settings, str(job.stop_file), ds, **extra)
            for event in stream:
                if event.get("type") == "weights":
                    weights = event
                    continue
                events.append(event)
                job.queue.put(event)
            end = events[-1] if events and events[-1].get("type") == "end" else {}
            if weights is not None and end.get("status") in ("completed", "stopped"):
                model = _model_from(weights["spec"], weights["state"])
                rec = self.add_run(dict(spec=weights["spec"], settings=settings, events=events,
                                        model=model, dataset_key=key,
                                        dataset_info=_dataset_info(ds), classes=list(ds.classes)))
                job.run_id = rec.id
                job.save_error = rec.save_error
            elif end:
                job.error = end.get("message") or f"the run {end.get('status')}"
        except Exception as e:  # noqa: BLE001 - reported to the user as one line
            job.error = _one_line(e)
        finally:
            with self._lock:
                job.done.set()
            job.queue.put(None)
            try:
                job.stop_file.unlink(missing_ok=True)
            except OSError:
                pass

    def _updates(self, job: _Training, poll: float) -> Iterator[TrainUpdate]:
        events: list[dict] = []
        finished = False
        try:
            while True:
                new = False
                deadline = time.monotonic() + poll
                while True:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    try:
                        item = job.queue.get(timeout=timeout)
                    except queue.Empty:
                        break
                    if item is None:
                        finished = True
                        break
                    events.append(item)
                    new = True
                frac, text = progress_text(events, job.epochs)
                device = next((e.get("device_name", "") for e in events if e.get("type") == "start"), "")
                if finished:
                    yield self._final_update(job, events, new, device)
                    return
                yield TrainUpdate(list(events), new, frac, text, device_name=device)
        finally:
            if not finished:
                job.request_stop()  # the UI went away (Stop, cancel, closed tab)

    def _final_update(self, job: _Training, events: list[dict], new: bool, device: str) -> TrainUpdate:
        end = next((e for e in reversed(events) if e.get("type") == "end"), {})
        frac, text = progress_text(events, job.epochs)
        if job.run_id is not None:
            status = end.get("status", "completed")
            acc = final_test_acc(events)
            acc_text = "" if acc is None else f", test accuracy {100 * acc:.1f}%"
            msg = f"{job.run_id} {status}: {end.get('message', '')}{acc_text}"
            warning = job.save_error or ""
            if warning:
                msg += f" — {warning}"
            return TrainUpdate(events, new, frac if status != "completed" else 1.0, text, True,
                               status, msg, job.run_id, device, warning)
        status = end.get("status", "error")
        return TrainUpdate(events, new, frac, text, True, status,
                           job.error or "the run ended without a result", None, device)

    def stop_training(self, wait: float = 3.0) -> str | None:
        """Ask the running training to stop; wait up to `wait` s for it to be recorded.
        Returns the new run's id (None if nothing was running or it is not done yet)."""
        with self._lock:
            job = self._training
        if job is None:
            return None
        job.request_stop()
        job.done.wait(timeout=wait)
        return job.run_id


# ---------------------------------------------------------------- images for inspection

def test_images(ds: Any, n: int = GALLERY_SIZE) -> list[tuple[Any, str]]:
    """The first `n` test images as (H, W, C) uint8 numpy arrays with their class names."""
    out = []
    for i in range(min(n, len(ds.test_y))):
        img = ds.test_x[i].permute(1, 2, 0).numpy()
        out.append((img[:, :, 0] if img.shape[2] == 1 else img, ds.classes[int(ds.test_y[i])]))
    return out


UPLOAD_IMAGE_MAX_PIXELS = 40_000_000   # as for image folders (lab.data.folder)
UPLOAD_IMAGE_KEEP_SIDE = 512           # an uploaded picture is kept at most this big


def read_image_file(path: str | Path, name: str | None = None,
                    max_bytes: int | None = None,
                    max_pixels: int = UPLOAD_IMAGE_MAX_PIXELS) -> Any:
    """An uploaded image file as a uint8 (H, W, 3) or (H, W) array, at most
    UPLOAD_IMAGE_KEEP_SIDE a side; SessionError with one line naming the file otherwise.

    The pixel count is read from the header and refused before anything is decoded
    (a decompression bomb: a small PNG declaring 30000x30000 pixels); empty, truncated
    and non-image files are refused by name."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise SessionError(f"{name} could not be read; upload it again") from None
    if size == 0:
        raise SessionError(f"{name} is empty (0 bytes); upload a PNG, JPEG, GIF, BMP or WebP image")
    if max_bytes is not None and size > max_bytes:
        raise SessionError(f"{name} is {size / 2**20:.1f} MB; images are limited to "
                           f"{max_bytes / 2**20:g} MB")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise SessionError(f"{name} declares {what}; at most {max_pixels:,} are accepted") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise SessionError(f"{name} is not an image that can be read; upload a PNG, JPEG, GIF, "
                           f"BMP or WebP image") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise SessionError(f"{name} declares {w}×{h} = {w * h:,} pixels; at most "
                               f"{max_pixels:,} are accepted")
        if w < 1 or h < 1:
            raise SessionError(f"{name} has no pixels ({w}×{h})")
        try:
            if im.format == "JPEG":
                im.draft("RGB", (UPLOAD_IMAGE_KEEP_SIDE, UPLOAD_IMAGE_KEEP_SIDE))
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                out = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)),
                                            rgba).convert("RGB")
            elif im.mode in ("L", "1"):
                out = im.convert("L")
            elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                a = np.asarray(im, dtype=np.float64)
                lo, hi = float(a.min()), float(a.max())
                a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
                out = Image.fromarray(a.round().astype(np.uint8), "L")
            else:
                out = im.convert("RGB")
            out.thumbnail((UPLOAD_IMAGE_KEEP_SIDE, UPLOAD_IMAGE_KEEP_SIDE), Image.BILINEAR)
            return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            raise SessionError(f"{name} is truncated or corrupt; upload the image again") from None


def prepare_image(array: Any, input_shape: tuple[int, int, int] | list) -> Any:
    """An uploaded picture (H, W[, C]) of any size to uint8 (C, H, W) at the input shape
    (RGBA composited on white, grey <-> RGB as the network needs)."""
    import numpy as np
    from PIL import Image
    if array is None:
        raise SessionError("no image: upload one, draw one or pick a test image")
    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = np.clip(a * (255 if a.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / 255
        a = (a[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
        raise SessionError(f"that is not an image (array of shape {tuple(a.shape)})")
    c, h, w = (int(v) for v in input_shape)
    img = Image.fromarray(a if a.ndim == 2 or a.shape[2] == 3 else a[:, :, 0])
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    out = np.asarray(img, dtype=np.uint8)
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    if out.shape[0] != c:
        raise SessionError(f"the network takes {c}-channel images; this one has {out.shape[0]}")
    return np.ascontiguousarray(out)


def prepare_sketch(value: Any, input_shape: tuple[int, int, int] | list) -> Any:
    """A sketchpad drawing to a digit-data-set image: light strokes on a dark ground,
    cropped to the strokes and centred with a margin as in MNIST. None if nothing is drawn."""
    import numpy as np
    if value is None:
        return None
    a = value.get("composite") if isinstance(value, dict) else value
    if a is None:
        return None
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 4 and a[:, :, 3].min() < 255:
        ink = a[:, :, 3].astype(np.float32)          # strokes are opaque on a clear canvas
    else:
        a = a[:, :, :3] if a.ndim == 3 else a        # an opaque canvas: ink is what differs
        grey = a.mean(axis=2) if a.ndim == 3 else a.astype(np.float32)
        ink = 255 - grey if grey.mean() > 127 else grey
    ink = np.clip(ink, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(ink > 32)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(max(y1 - y0, x1 - x0) * 1.4) + 1     # MNIST: a 20 px digit in a 28 px frame
    canvas = np.zeros((side, side), np.uint8)
    oy, ox = (side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2
    canvas[oy:oy + y1 - y0, ox:ox + x1 - x0] = ink[y0:y1, x0:x1]
    c, h, w = (int(v) for v in input_shape)
    from PIL import Image
    img = np.asarray(Image.fromarray(canvas).resize((w, h), Image.BILINEAR), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(img[None], c, axis=0))


def input_tensor(ds: Any, image_chw: Any) -> Any:
    """A uint8 (C, H, W) image as the network's normalised (1, C, H, W) float input."""
    import numpy as np
    import torch
    return ds.normalize(torch.from_numpy(np.ascontiguousarray(image_chw))).unsqueeze(0)


def test_batch(ds: Any, n: int) -> tuple[Any, Any, Any]:
    """(normalised x, labels, masks or None) of the first `n` test images."""
    n = min(n, len(ds.test_y))
    masks = None if ds.test_masks is None else ds.test_masks[:n]
    return ds.normalize(ds.test_x[:n]), ds.test_y[:n], masks


def _model_from(spec: dict, state: dict) -> Any:
    import blocks
    model = blocks.build(spec, device="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _dataset_info(ds: Any) -> dict:
    info = getattr(ds, "info", None)
    return info() if callable(info) else {"name": getattr(ds, "name", "?")}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _return_memory() -> None:
    """Hand freed memory back to the OS. glibc keeps what training threads freed in their
    arenas (about 25 MB a visitor here), so without this the server's RSS only grows as
    visitors come and go. Linux/glibc only; a no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _os_reason(e: BaseException) -> str:
    """A short reason for a failed write: "the server's disk is full" for ENOSPC."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "the server's disk is full"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return _one_line(e)


__all__ = ["GALLERY_SIZE", "LimitError", "RunRecord", "Session", "SessionError", "TrainUpdate",
           "close_sessions", "default_train_size", "open_sessions", "progress_text",
           "remove_session_dir", "session_root",
           "train_events"]
