"""One browser session's runtime state: its finished runs, its data sets, its training.

Where runs live depends on the host (`public_mode()`):

* locally (`python app.py`) every visitor reads and writes the shared runs folder,
  $CONVSCOPE_RUNS_DIR or ./runs — the folder `lab train` and torchrun write too — so the
  run pickers list every complete run in it (lab/runs.py `scan_runs`), a run trained in
  the app is there after a restart, and runs can be renamed and deleted;
* on a public host (a Hugging Face Space, detected by its SPACE_ID variable, or
  CONVSCOPE_PUBLIC=1) each visitor keeps private runs, so nobody sees or deletes
  another's.

The app keeps one `Session` per visitor in a `gr.State`. A session owns a temporary folder
(`<root>/s-<session key>`) holding its uploads and, in public mode, its run folders;
`close()` — called from `demo.unload` (through `close_sessions`, as soon as the tab is
closed) and again from the state's delete callback (which Gradio runs an hour later) —
stops its training, drops its runs and data sets and removes the folder (never the
shared runs folder).

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
PUBLIC_ENV = "CONVSCOPE_PUBLIC"
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


def public_mode(env: dict | None = None) -> bool:
    """Whether this is a public host, where each visitor's runs stay private: a Hugging
    Face Space (SPACE_ID is set there) or CONVSCOPE_PUBLIC=1; CONVSCOPE_PUBLIC=0 forces the
    shared local mode even on a Space."""
    env = os.environ if env is None else env
    flag = str(env.get(PUBLIC_ENV, "")).strip().lower()
    if flag in ("0", "no", "false"):
        return False
    return flag in ("1", "yes", "true") or bool(env.get("SPACE_ID"))


def shared_runs_dir(env: dict | None = None) -> Path | None:
    """The runs folder every visitor shares ($CONVSCOPE_RUNS_DIR or ./runs), or None in
    public mode."""
    from lab.runs import RUNS_ENV
    env = os.environ if env is None else env
    return None if public_mode(env) else Path(env.get(RUNS_ENV) or "runs")


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
    title: str = ""               # a name given in the app (private runs; shared ones rename their folder)

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
    def dataset_name(self) -> str:
        """The data set as people call it: a built-in's name, or an uploaded zip's own file
        name — never the server path it was stored under."""
        return dataset_display_name(self.settings.get("dataset", "?"))

    @property
    def label(self) -> str:
        acc = self.best_test_acc
        acc_text = "" if acc is None else f" · {100 * acc:.1f}%"
        name = f"{self.title} · " if self.title else ""
        return (f"{self.id} · {name}{self.spec.get('name', 'network')} · "
                f"{self.dataset_name}{acc_text}")


def dataset_display_name(dataset: Any) -> str:
    """'shapes' -> 'shapes'; '/tmp/gradio/3f…9a/tiny.zip' -> 'tiny.zip' (Gradio keeps an
    upload's own file name as the last part of the path it stores it under)."""
    text = str(dataset)
    return text.replace("\\", "/").rstrip("/").rpartition("/")[2] or text


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
                 watch: dict | None = None, run_root: str | None = None,
                 resume_dir: str | None = None) -> Iterator[dict]:
    """Train `spec` and yield the trainer's events (plain dicts), then one
    {"type": "weights", "state": {name: CPU tensor}, "spec": built spec, "history": every
    event of the run, "path": its folder or None, "save_error": why it is not on disk}.
    With `watch` ({"view", "index"[, "layer"]}) a "watch" snapshot of that view of test
    image `index` follows every epoch event (lab/watch.py; kept in the run's events).

    With `run_root` the run is written as `lab train` writes it: a folder under `run_root`
    with a checkpoint at the end of every epoch (lab/runs.py RunWriter); `resume_dir`
    continues the run in that folder from its checkpoint. Module-level and plain-data in,
    plain-data out, so it can run under `spaces.GPU` in another process. The run stops
    after the current batch once `stop_file` exists or its folder is removed.
    """
    from lab.datasets import load_dataset
    from lab.runs import RunError, RunParts, RunWriter, load_checkpoint
    from lab.train.trainer import Trainer, TrainSettings

    s = TrainSettings.from_dict(settings)
    if dataset is None:
        dataset = load_dataset(s.dataset, s.data_root, seed=s.seed, download=download_allowed(),
                               train_size=train_size, test_size=test_size)
    checkpoint, writer = None, None
    try:
        if resume_dir is not None:
            checkpoint = load_checkpoint(resume_dir)
            writer = RunWriter.resume(resume_dir)
        trainer = Trainer(spec, s, dataset, resume=checkpoint)
    except RunError as e:
        raise SessionError(_one_line(e)) from None
    watcher = make_watcher(watch, dataset) if watch else None
    if writer is None and run_root is not None:
        writer = RunWriter(run_root, trainer.spec.get("name", "network"))
    load = {"train_size": train_size, "test_size": test_size}
    path, save_error = None, None
    try:
        for event in trainer.run():
            if not trainer.stopping and _stop_requested(stop_file):
                trainer.stop()
            snap = watcher.on_event(event, trainer) if watcher is not None else None
            if snap is not None:
                trainer.history.append(snap)
            # A closed session's folder is gone: nothing more is written for it. The
            # checkpoint follows the watch snapshot, so its events hold it too.
            session_open = os.path.isdir(os.path.dirname(stop_file))
            if event["type"] == "epoch" and writer is not None and session_open:
                try:
                    path = writer.save(RunParts.from_trainer(trainer, load), trainer.checkpoint())
                except OSError as e:
                    save_error = f"a checkpoint could not be written ({_os_reason(e)})"
            yield event
            if snap is not None:
                yield snap
        end = next((e for e in reversed(trainer.history) if e.get("type") == "end"), {})
        if writer is not None and end.get("status") in ("completed", "stopped") and \
                os.path.isdir(os.path.dirname(stop_file)):
            try:
                path = writer.save(RunParts.from_trainer(trainer, load))
                save_error = None
            except OSError as e:
                save_error = _os_reason(e)
    finally:
        if writer is not None:
            writer.close()
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in trainer.model.state_dict().items()}
    yield {"type": "weights", "state": state, "spec": trainer.model.spec, "history": list(trainer.history),
           "path": None if path is None else str(path), "save_error": save_error}


WATCH_EVERY_S = 5.0


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
    # epoch ends, and inside long epochs every WATCH_EVERY_S at most (and under 5% of the time)
    return Watcher(compute, index=index, min_interval=WATCH_EVERY_S, during_epoch=True)


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
                 limits: Limits | None = None, runs_dir: str | Path | None | bool = True):
        """`runs_dir`: the shared runs folder, None for private runs (public mode), or True
        (the default) to decide from the environment (`shared_runs_dir()`)."""
        self.key = _safe_key(key)
        self.root = Path(root or session_root())
        self.limits = limits or Limits.from_env()
        self.shared: Path | None = shared_runs_dir() if runs_dir is True else (
            None if runs_dir is None or runs_dir is False else Path(runs_dir))
        self.runs: "OrderedDict[str, RunRecord]" = OrderedDict()
        self._datasets: "OrderedDict[tuple, Any]" = OrderedDict()
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._training: _Training | None = None
        self.prefs: dict[str, Any] = {}   # this visitor's display choices (log-scale loss)
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

    @property
    def runs_dir(self) -> Path:
        """Where this session's runs are written: the shared folder, or its own."""
        return self.shared if self.shared is not None else self.dir / "runs"

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
        """The data set a run was trained on, as it saw it: at the run's input size (a run of
        `lab train --input 3x128x128` resized its images) and with the normalisation it
        trained with (a fine-tuned run takes its pretrained weights' mean/std,
        lab/pretrained.py), both read from the run's spec and dataset.json."""
        import dataclasses
        name, seed, train_size, test_size, data_root = run.dataset_key
        ds = self.dataset(name, seed, train_size, test_size, data_root)
        side = [int(v) for v in (run.spec or {}).get("input", [])[1:]]
        if len(side) == 2 and side[0] == side[1] and list(ds.input_shape[1:]) != side:
            key = (name, seed, train_size, test_size, data_root, side[0])
            with self._lock:
                cached = self._datasets.get(key)
            if cached is None:
                from lab.datasets import load_dataset
                cached = load_dataset(name, data_root, seed=seed, download=download_allowed(),
                                      image_size=side[0], train_size=train_size, test_size=test_size)
                with self._lock:
                    self._datasets[key] = cached
                    while len(self._datasets) > 2:
                        self._datasets.popitem(last=False)
            ds = cached
        info = run.dataset_info or {}
        mean, std = info.get("mean"), info.get("std")
        if (mean and std and len(mean) == len(ds.mean) and len(std) == len(ds.std)
                and any(abs(a - b) > 1e-5 for a, b in zip(list(mean) + list(std), list(ds.mean) + list(ds.std)))):
            ds = dataclasses.replace(ds, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
        return ds

    # -- runs

    def run(self, run_id: str | None) -> RunRecord:
        """A finished run by id (None: the latest); SessionError if there is none. In the
        shared mode a run of the folder is read from disk on first use."""
        if self.shared is not None and run_id not in (None, ""):
            run_id = str(run_id).split(" · ", 1)[0]
            with self._lock:
                rec = self.runs.get(run_id)
            if rec is not None and (rec.path is None or rec.path.is_dir()):
                return rec
            return self._load_shared(run_id)
        with self._lock:
            if not self.runs and self.shared is None:
                raise SessionError("no finished run yet: train a network on the Train tab first")
            if run_id is None or run_id == "":
                if self.runs:
                    return next(reversed(self.runs.values()))
        if run_id is None or run_id == "":
            listed = self.run_choices()
            if not listed:
                raise SessionError("no finished run yet: train a network on the Train tab first, "
                                   "or put runs in the runs folder")
            return self.run(listed[0][1])
        with self._lock:
            run_id = str(run_id).split(" · ", 1)[0]
            if run_id not in self.runs:
                raise SessionError(f"there is no run '{run_id[:40]}' in this session")
            return self.runs[run_id]

    def _load_shared(self, run_id: str) -> RunRecord:
        """A run of the shared folder as a RunRecord (cached, within the run limit)."""
        from lab.runs import RunError, _run_in, load_run
        try:
            path = _run_in(self.shared, run_id)
        except RunError as e:
            raise SessionError(str(e)) from None
        if not path.is_dir():
            with self._lock:
                self.runs.pop(run_id, None)
            raise SessionError(f"there is no run '{run_id[:40]}' in {self.shared}; refresh the list")
        try:
            rec = record_from_run(load_run(path))
        except RunError as e:
            raise SessionError(_one_line(e)) from None
        self._remember(rec)
        return rec

    def _remember(self, rec: RunRecord) -> None:
        """Hold `rec` in memory; beyond the run limit the oldest are dropped (and, for
        private runs, their folders removed; the shared folder's runs stay on disk)."""
        with self._lock:
            if self.closed:
                return
            self.runs[rec.id] = rec
            self.runs.move_to_end(rec.id)
            while len(self.runs) > self.limits.max_runs:
                _, old = self.runs.popitem(last=False)
                if self.shared is None and old.path is not None:
                    shutil.rmtree(old.path, ignore_errors=True)

    def run_choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs, newest first: the session's runs, and in the shared mode every
        complete run in the folder (damaged folders are left out; see `damaged_runs`)."""
        with self._lock:
            mine = [(r.label, r.id) for r in reversed(self.runs.values())]
        if self.shared is None:
            return mine
        from lab.runs import scan_runs
        listed = [(i.label, i.name) for i in scan_runs(self.shared) if not i.damaged]
        names = {name for _, name in listed}
        unsaved = [(label, rid) for label, rid in mine if rid not in names
                   and self.runs.get(rid) is not None and self.runs[rid].path is None]
        return unsaved + listed

    def damaged_runs(self) -> list[str]:
        """"<folder>: <reason>" for each damaged folder in the shared runs folder."""
        if self.shared is None:
            return []
        from lab.runs import scan_runs
        return [f"{i.name}: {i.damaged}" for i in scan_runs(self.shared) if i.damaged]

    def add_run(self, record_parts: dict, path: Path | None = None, run_id: str | None = None) -> RunRecord:
        """Record a finished run; `path`: its folder, when the training wrote it already
        (else it is saved here, under `runs_dir`). In the shared mode the run's id is its
        folder's name; the oldest runs beyond the limit are dropped from memory."""
        from lab.runs import RunParts, save_run
        if run_id is None:
            with self._lock:
                run_id = f"run-{next(self._ids)}"
        rec = RunRecord(id=run_id, **record_parts)
        if path is not None:
            rec.path = Path(path)
        elif not self.closed:
            try:
                rec.path = save_run(RunParts(rec.spec, rec.settings, rec.events, rec.model,
                                             rec.dataset_info), self.runs_dir)
            except (OSError, ValueError) as e:
                # save_run leaves no half-written folder; the run stays usable in memory.
                rec.path = None
                rec.save_error = (f"{run_id} could not be saved to disk ({_os_reason(e)}); it is "
                                  f"kept in memory for this session, so export what you need")
        if self.shared is not None and rec.path is not None:
            rec.id = rec.path.name
        self._remember(rec)
        return rec

    def remove_run(self, run_id: str) -> None:
        """Delete a run: from memory and from disk (in the shared folder, refused while
        another process still trains it)."""
        from lab.runs import RunError, delete_run
        rec = self.run(run_id)
        if self.shared is not None and rec.path is not None:
            try:
                delete_run(self.shared, rec.path.name)
            except RunError as e:
                raise SessionError(str(e)) from None
        with self._lock:
            self.runs.pop(rec.id, None)
        if self.shared is None and rec.path is not None:
            shutil.rmtree(rec.path, ignore_errors=True)

    def rename_run(self, run_id: str, new_name: str) -> str:
        """Rename a run; returns its new id. In the shared mode its folder is renamed; a
        private run keeps its id and shows the new name."""
        from lab.runs import RunError, rename_run
        rec = self.run(run_id)
        new_name = str(new_name or "").strip()
        if self.shared is None or rec.path is None:
            if not new_name or len(new_name) > 80 or "\n" in new_name:
                raise SessionError("give a name of 1 to 80 characters on one line")
            rec.title = new_name
            return rec.id
        try:
            path = rename_run(self.shared, rec.path.name, new_name)
        except RunError as e:
            raise SessionError(str(e)) from None
        with self._lock:
            self.runs.pop(rec.id, None)
        rec.path, rec.id = path, path.name
        self._remember(rec)
        return rec.id

    def import_run(self, zip_path: str | Path) -> RunRecord:
        """Open a run .zip (checked like every upload; lab/runzip.py) as a run of this
        session (or of the shared folder)."""
        from lab.runs import RunError, load_run
        from lab.runzip import import_run_zip
        try:
            path = import_run_zip(zip_path, self.runs_dir)
            run = load_run(path)
        except RunError as e:
            raise SessionError(_one_line(e)) from None
        rec = record_from_run(run)
        if self.shared is None:
            with self._lock:
                rec.id = f"run-{next(self._ids)}"
        self._remember(rec)
        return rec

    def export_run_zip(self, run_id: str, out: str | Path) -> Path:
        """The run as a .zip (lab/runzip.py), written to `out`."""
        from lab.runs import RunError
        from lab.runzip import zip_run
        rec = self.run(run_id)
        if rec.path is None:
            raise SessionError(f"{rec.id} was not saved to disk, so it cannot be zipped; export "
                               f"its weights and spec instead")
        try:
            return zip_run(rec.path, out)
        except RunError as e:
            raise SessionError(str(e)) from None

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

    def continue_plan(self, run_id: str, epochs: int | None = None) -> tuple[dict, Any, RunRecord]:
        """(spec, settings, run) to continue the run `run_id` from its checkpoint to
        `epochs` in all (None: its planned total); SessionError when it cannot go on."""
        from lab.runs import CHECKPOINT, read_run_json, RunError
        from lab.train.trainer import TrainSettings
        rec = self.run(run_id)
        if rec.path is None or not (rec.path / CHECKPOINT).exists():
            raise SessionError(f"{rec.id} has no checkpoint to continue from (it ended before its "
                               f"first epoch did, or was saved before runs kept checkpoints)")
        try:
            done = int(read_run_json(rec.path / CHECKPOINT).get("epoch", 0))
        except (RunError, AttributeError, TypeError, ValueError) as e:
            raise SessionError(_one_line(e)) from None
        settings = dict(rec.settings)
        if epochs is not None:
            settings["epochs"] = int(epochs)
        if int(settings.get("epochs", 0)) <= done:
            raise SessionError(f"{rec.id} has trained {done} epoch(s) already; ask for more "
                               f"epochs in all to continue it")
        try:
            return rec.spec, TrainSettings.from_dict(settings), rec
        except ValueError as e:
            raise SessionError(_one_line(e)) from None

    def start_training(self, spec: dict, settings: Any, train_size: int | None = None,
                       test_size: int | None = None, poll: float = 0.25,
                       watch: dict | None = None, resume: str | None = None) -> Iterator[TrainUpdate]:
        """Train in a worker thread; yield a TrainUpdate at least every `poll` seconds until
        the run ends. The run is recorded into the session by the worker, so it survives
        this generator being closed (which asks the run to stop). `watch`: see
        train_events. `resume`: a run id to continue from its checkpoint instead (`spec`
        and `settings` then come from `continue_plan`)."""
        if self.closed:
            raise SessionError("this session has ended; reload the page")
        rec = None
        if resume is not None:
            rec = self.run(resume)
            train_size, test_size = rec.dataset_key[2], rec.dataset_key[3]
        if train_size is None and rec is None:
            train_size = default_train_size(settings.dataset)
        if test_size is None and rec is None:
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
            target=ctx.run, args=(self._worker, job, spec, settings.to_dict(), ds, key, watch, rec),
            name=f"convscope-train-{self.key[:8]}", daemon=True)
        job.thread.start()
        return self._updates(job, poll)

    def _worker(self, job: _Training, spec: dict, settings: dict, ds: Any, key: tuple,
                watch: dict | None = None, resume: RunRecord | None = None) -> None:
        events: list[dict] = []
        weights = None
        resume_dir = None if resume is None else str(resume.path)
        run_root = None if self.closed else str(self.runs_dir)
        try:
            if zerogpu.on_zerogpu():
                stream = train_events_gpu(spec, settings, str(job.stop_file), None,
                                          key[2], key[3], watch, run_root, resume_dir)
            else:
                extra = {k: v for k, v in (("watch", watch), ("run_root", run_root),
                                           ("resume_dir", resume_dir)) if v}
                stream = train_events(spec, settings, str(job.stop_file), ds, key[2], key[3], **extra)
            for event in stream:
                if event.get("type") == "weights":
                    weights = event
                    continue
                events.append(event)
                job.queue.put(event)
            end = events[-1] if events and events[-1].get("type") == "end" else {}
            if weights is not None and end.get("status") in ("completed", "stopped"):
                model = _model_from(weights["spec"], weights["state"])
                info = {**_dataset_info(ds), "load": {"train_size": key[2], "test_size": key[3]}}
                if resume is not None:
                    with self._lock:
                        self.runs.pop(resume.id, None)
                rec = self.add_run(dict(spec=weights["spec"], settings=settings,
                                        events=weights.get("history") or events, model=model,
                                        dataset_key=key, dataset_info=info, classes=list(ds.classes)),
                                   path=Path(weights["path"]) if weights.get("path") else None,
                                   run_id=None if resume is None else resume.id)
                if weights.get("save_error") and rec.save_error is None:
                    rec.save_error = (f"{rec.id} could not be saved to disk completely "
                                      f"({weights['save_error']}); export what you need")
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


def record_from_run(run: Any) -> RunRecord:
    """A run read from its folder (lab.runs.Run) as a RunRecord; its data set is loaded as
    it was for training (name, seed, sizes, data root)."""
    settings, info = dict(run.settings), dict(run.dataset_info or {})
    load = info.get("load") if isinstance(info.get("load"), dict) else {}
    key = (str(settings.get("dataset") or info.get("name", "shapes")), int(settings.get("seed", 0) or 0),
           load.get("train_size"), load.get("test_size"), str(settings.get("data_root", "data")))
    try:
        created = (run.path / "spec.json").stat().st_mtime
    except OSError:
        created = time.time()
    return RunRecord(id=run.path.name, spec=run.spec, settings=settings, events=list(run.metrics),
                     model=run.model, dataset_key=key, dataset_info=info,
                     classes=[str(c) for c in info.get("classes", [])], path=run.path, created=created)


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
