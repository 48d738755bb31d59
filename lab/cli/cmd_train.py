"""`python -m lab train`: train a preset or a spec file on a data set and save the run.

A progress bar goes to stderr on a terminal; `--json` prints one JSON object per event
to stdout, the last being the "end" event plus `run_dir`. Ctrl-C stops after the
current batch and still saves the run (a second Ctrl-C aborts).

The run folder (under --out, default $CONVSCOPE_RUNS_DIR or runs/) appears at the end of
the first epoch and gets a checkpoint at the end of every epoch. `--resume DIR [--epochs N]`
continues a stopped, crashed or finished run from its last checkpoint, exactly as if it
had never stopped (with more epochs than planned, on the new total's schedule);
`--stop-after K` stops at the end of epoch K.

Under `torchrun --nproc_per_node=N -m lab train …` every process trains its shard under
DistributedDataParallel (lab/train/distributed.py); rank 0 alone prints and saves the run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lab.cli import UsageError
from lab.cli.cmd_summary import read_spec_file
from lab.train.device import DEVICES, choose_device
from lab.train.trainer import OPTIMIZERS, SCHEDULES, Trainer, TrainingError, TrainSettings

DATASET_HELP = "shapes, digits, mnist, fashion-mnist, cifar10, or a path"
# Flags that are settings of the run (argument dest -> TrainSettings field). Their argparse
# default is None, so that a resumed run can tell which ones were given.
SETTING_FLAGS = {"dataset": "dataset", "data_root": "data_root", "epochs": "epochs",
                 "batch_size": "batch_size", "optimizer": "optimizer", "lr": "lr",
                 "momentum": "momentum", "weight_decay": "weight_decay", "schedule": "schedule",
                 "label_smoothing": "label_smoothing", "augment": "augment", "device": "device",
                 "seed": "seed", "width": "width", "sync_bn": "sync_bn", "weights": "weights",
                 "freeze": "freeze", "report_interval": "report_interval"}
# What a resumed run may change: how long it trains, where, and how often it reports.
RESUME_MAY_CHANGE = ("epochs", "device", "data_root", "report_interval")


def runs_dir_default() -> str:
    """$CONVSCOPE_RUNS_DIR, else runs/ (the app's default too)."""
    from lab.runs import default_root
    return str(default_root())


def add_parser(subparsers) -> None:
    d = TrainSettings()
    p = subparsers.add_parser("train", help="train a network and save the run",
                              description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", metavar="NAME", help="a preset name (`python -m lab presets`)")
    which.add_argument("--spec", metavar="FILE", help="a network spec (JSON file)")
    which.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint, with its own settings "
                            "(--epochs N: train to N epochs in all)")
    p.add_argument("--dataset", help=f"{DATASET_HELP} (default {d.dataset})")
    p.add_argument("--data-root", metavar="DIR", help=f"where data sets are kept (default {d.data_root}/)")
    p.add_argument("--no-download", action="store_true",
                   help="never download; fail if the data set's files are missing")
    p.add_argument("--train-size", type=int, metavar="N", help="use only N training images")
    p.add_argument("--test-size", type=int, metavar="N", help="use only N test images")
    p.add_argument("--epochs", type=int, metavar="N", help=f"epochs in all (default {d.epochs})")
    p.add_argument("--stop-after", type=int, metavar="K",
                   help="stop at the end of epoch K (the run can be resumed with --resume)")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help=f"global batch; under torchrun split evenly over the processes "
                        f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, metavar="X", help=f"(peak) learning rate (default {d.lr:g})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"(default {d.optimizer})")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"(default {d.schedule})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    p.add_argument("--weight-decay", type=float, metavar="X", help=f"(default {d.weight_decay:g})")
    p.add_argument("--label-smoothing", type=float, metavar="X", help=f"(default {d.label_smoothing})")
    p.add_argument("--augment", action="store_true", default=None, help="random flips and pad-and-crop")
    p.add_argument("--width", type=float, metavar="W", help="channel width multiplier")
    p.add_argument("--input", metavar="CxHxW",
                   help="resize the data set's images to this square size, e.g. 3x128x128")
    p.add_argument("--weights", metavar="FILE|imagenet",
                   help="fine-tune: start from 'imagenet' (torchvision's weights for the preset) or a "
                        ".pth / .safetensors file; the classifier is new, images take the weights' "
                        "normalisation")
    p.add_argument("--freeze", choices=("none", "backbone"),
                   help="with --weights: 'backbone' trains only the new tensors (classifier, SE/CBAM); "
                        "frozen BatchNorm keeps its statistics")
    p.add_argument("--device", choices=DEVICES, help=f"(default {d.device})")
    p.add_argument("--seed", type=int, help=f"(default {d.seed})")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun on GPUs: BatchNorm statistics over all processes")
    p.add_argument("--report-interval", type=float, metavar="S",
                   help=f"seconds between step events (default {d.report_interval})")
    p.add_argument("--out", metavar="DIR",
                   help="where runs are saved (default $CONVSCOPE_RUNS_DIR, else runs/)")
    p.add_argument("--watch", choices=("gradcam", "cbam", "se", "features", "ghost"), metavar="VIEW",
                   help="record this view (gradcam, cbam, se, features, ghost) of one test image at "
                        "every epoch end, on a copy of the weights; saved in the run's metrics")
    p.add_argument("--watch-index", type=int, default=0, metavar="N", help="the test image to watch")
    p.add_argument("--watch-layer", metavar="NAME", help="the layer to watch (default: the view's own)")
    p.add_argument("--watch-every", type=float, metavar="S",
                   help="also snapshot inside an epoch, at most every S seconds (and never more "
                        "than 5%% of the time); default: at epoch ends only")
    p.add_argument("--json", action="store_true", help="print one JSON object per event")
    p.set_defaults(func=run)


def make_watcher(args: argparse.Namespace, ds, model):
    """A Watcher of `--watch` for test image `--watch-index` (lab/watch.py, visual/watch.py)."""
    from lab.watch import Watcher
    from visual.watch import watch_snapshot, watch_views
    if not 0 <= args.watch_index < len(ds.test_y):
        raise UsageError(f"--watch-index must be from 0 to {len(ds.test_y) - 1} (the test images), "
                         f"got {args.watch_index}")
    if args.watch not in watch_views(model):
        raise UsageError(f"this network has no {args.watch} view to watch; it offers "
                         f"{', '.join(watch_views(model))}")
    x = ds.normalize(ds.test_x[args.watch_index:args.watch_index + 1])
    target = int(ds.test_y[args.watch_index])

    def compute(twin):
        return watch_snapshot(twin, x.to(next(twin.parameters()).device), args.watch,
                              args.watch_layer, target)
    import copy
    compute(copy.deepcopy(model).eval())    # a wrong layer name fails now, not after an epoch
    if args.watch_every is not None and args.watch_every <= 0:
        raise UsageError(f"--watch-every must be a positive number of seconds, got {args.watch_every}")
    return Watcher(compute, index=args.watch_index, min_interval=args.watch_every or 0.0,
                   during_epoch=args.watch_every is not None)


def _image_size(args: argparse.Namespace) -> int | None:
    """The square side --input asks for (None: the data set's own size)."""
    if args.input is None:
        return None
    from lab.cli.cmd_summary import parse_shape
    c, h, w = parse_shape(args.input)
    if h != w:
        raise UsageError(f"--input must be square (the images are resized to one side), got {args.input}")
    return h


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings flags given on the command line, as TrainSettings fields."""
    return {field_: getattr(args, dest) for dest, field_ in SETTING_FLAGS.items()
            if getattr(args, dest) is not None}


def _settings(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(**_given(args))


@dataclass
class _Plan:
    """What to train: a new run (spec None: the preset, made once the data is known) or,
    with `checkpoint`, the run in `run_dir` continued."""
    settings: TrainSettings
    spec: dict | None
    train_size: int | None
    test_size: int | None
    image_size: int | None = None
    checkpoint: Any = None
    run_dir: Path | None = None
    note: str = ""
    dataset_info: dict = field(default_factory=dict)


def _resume_plan(args: argparse.Namespace) -> _Plan:
    """Read the run to resume (every process reads it): settings, spec, checkpoint."""
    from lab.runs import RunError, load_checkpoint, read_run_json, read_run_metrics
    extra = [f"--{dest.replace('_', '-')}" for dest in SETTING_FLAGS
             if getattr(args, dest) is not None and dest not in RESUME_MAY_CHANGE]
    extra += [f"--{n.replace('_', '-')}" for n in ("train_size", "test_size", "input", "out")
              if getattr(args, n) is not None]
    if extra:
        raise UsageError(f"--resume continues a run with its own settings and folder; "
                         f"{', '.join(extra)} cannot change (only --epochs, --stop-after, --device, "
                         f"--data-root and --report-interval can)")
    path = Path(args.resume)
    try:
        if not path.is_dir():
            raise RunError(f"{path} is not a run folder")
        spec = read_run_json(path / "spec.json")
        saved = read_run_json(path / "settings.json")
        info = read_run_json(path / "dataset.json")
        end = next((e for e in reversed(read_run_metrics(path / "metrics.jsonl"))
                    if e.get("type") == "end"), None)
        ck = load_checkpoint(path)
    except RunError as e:
        raise UsageError(str(e)) from None
    overrides = {k: v for k, v in _given(args).items() if k in RESUME_MAY_CHANGE}
    settings = TrainSettings.from_dict({**saved, **overrides})
    planned = int(ck.meta.get("epochs", settings.epochs))
    if settings.epochs <= ck.epoch:
        done = "completed" if end and end.get("status") == "completed" else "trained"
        raise UsageError(f"{path} has {done} {ck.epoch} epoch(s); give --epochs N with N above "
                         f"{ck.epoch} to train it longer")
    if end is None:
        why = "it ended without an end record: killed or crashed"
    elif end.get("status") == "completed":
        why = f"it had completed its {planned} epoch(s)"
    else:
        why = f"it {end.get('status', 'ended')} at {end.get('epochs', 0):g} epoch(s)"
    note = f"resuming {path} from its checkpoint at the end of epoch {ck.epoch} ({why})"
    if end is not None and (end.get("epochs") or 0) > ck.epoch:
        note += f"; the steps after epoch {ck.epoch} are trained again"
    if settings.epochs != planned:
        note += (f"; {settings.epochs} epochs in all instead of {planned}: the remaining steps "
                 f"follow the learning-rate schedule for {settings.epochs}")
    load = info.get("load") if isinstance(info, dict) and isinstance(info.get("load"), dict) else {}
    return _Plan(settings, spec, load.get("train_size"), load.get("test_size"), load.get("image_size"),
                 ck, path, note)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be a positive whole number, got {value}")


@contextlib.contextmanager
def _ctrl_c_stops(trainer: Trainer, say) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) asks the trainer to stop — the run is still saved; a
    second aborts. Under torchrun the workers run in their own session: torchrun passes on
    the signal it got (Ctrl-C, or a job scheduler's SIGTERM) and kills them 30 s later."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_sig, _frame):
        if trainer.stopping:
            raise KeyboardInterrupt
        trainer.stop()
        say("stopping after this batch (Ctrl-C again to abort)" if trainer.dist is None else
            "stopping: all processes stop together at the next report (Ctrl-C again to abort)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


class _Display:
    """Human output: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.bar = None
        self.done = 0
        self.test_acc: float | None = None

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr if self.as_json else sys.stdout, flush=True)

    def event(self, e: dict) -> None:
        if self.as_json and e["type"] != "end":
            print(json.dumps(e), flush=True)
        kind = e["type"]
        if kind == "start":
            self.done = (e.get("resumed_from") or {}).get("step", 0)
            if sys.stderr.isatty():
                from tqdm import tqdm
                self.bar = tqdm(total=e["total_steps"], initial=self.done, file=sys.stderr,
                                unit="step", dynamic_ncols=True, leave=True)
            if not self.as_json:
                procs = e.get("processes", 1)
                where = e["device_name"] if procs == 1 else f"{procs} processes ({e['device_name']})"
                steps = (f"{e['total_steps']:,} steps" if not self.done else
                         f"steps {self.done + 1:,} to {e['total_steps']:,}")
                self.say(f"training on {where}: {e['params']:,} parameters, "
                         f"{e['train_size']:,} training / {e['test_size']:,} test images, {steps}")
        elif kind == "step" and self.bar is not None:
            self.bar.update(e["step"] - self.done)
            self.done = e["step"]
            self.bar.set_postfix(loss=f"{e['loss']:.4f}", test_acc=_pct(self.test_acc),
                                 img_s=f"{e['images_per_sec']:,.0f}", refresh=False)
        elif kind == "epoch":
            self.test_acc = e["test_acc"]
            if not self.as_json:
                self.say(f"epoch {e['epoch']}: train loss {_num(e['train_loss'])} acc "
                         f"{_pct(e['train_acc'])} | test loss {_num(e['test_loss'])} acc "
                         f"{_pct(e['test_acc'])} | {_num(e['images_per_sec'], ',.0f')} img/s")
        elif kind == "eval":           # the final evaluation of a run stopped mid-epoch
            self.test_acc = e["test_acc"]
            if not self.as_json:
                self.say(f"stopped at epoch {e['epoch']:g}: train loss {_num(e['train_loss'])} | "
                         f"test loss {_num(e['test_loss'])} acc {_pct(e['test_acc'])}")
        elif kind == "end" and self.bar is not None:
            self.bar.close()
            self.bar = None


class _Silent:
    """What processes other than rank 0 show: nothing."""
    bar = None

    def say(self, text: str) -> None:
        pass

    def event(self, e: dict) -> None:
        pass


@contextlib.contextmanager
def _said_once(rank: int) -> Iterator[None]:
    """Under torchrun every process checks the same arguments and meets the same mistake:
    rank 0 alone reports it, the others exit with the same status quietly."""
    from blocks import SpecError
    try:
        yield
    except (UsageError, SpecError, ValueError, TrainingError):
        if rank != 0:
            raise SystemExit(2) from None
        raise


def run(args: argparse.Namespace) -> int:
    from lab.train import distributed
    from presets import get_preset

    try:
        world = distributed.world_size_from_env()
    except distributed.DistributedError as e:
        raise UsageError(str(e)) from None
    with _said_once(distributed.rank_from_env()):
        _positive("--train-size", args.train_size)
        _positive("--test-size", args.test_size)
        _positive("--stop-after", args.stop_after)
        if args.resume:
            plan = _resume_plan(args)
        else:
            settings = _settings(args)              # ValueError -> one line, exit 2
            spec = read_spec_file(args.spec) if args.spec else None
            if args.preset:
                get_preset(args.preset)             # unknown names fail before data loads
            plan = _Plan(settings, spec, args.train_size, args.test_size, _image_size(args))
        if world == 1:
            choose_device(plan.settings.device)
    if world == 1:
        return _train(args, plan, None)[0]
    try:
        dist = distributed.setup(plan.settings.device)   # may differ by process: each one says
    except distributed.DistributedError as e:
        raise UsageError(str(e)) from None
    try:
        code, together = _train(args, plan, dist)
        # After a run every process ended alike (completed, stopped, diverged), all wait for
        # rank 0 to save. One that failed alone (out of memory) leaves at once: the others
        # may be inside a collective it will never join; torchrun stops them.
        dist.close(wait=together)
    except BaseException as e:
        dist.close(wait=False)
        if distributed.lost_a_peer(e):
            raise UsageError(f"process {dist.rank} stopped: another process of this job failed "
                             f"(its message is above)") from None
        raise
    return code


def _open_writer(args: argparse.Namespace, plan: _Plan, spec_name: str):
    """Rank 0's RunWriter: the resumed run's folder (locked), or a new one under --out."""
    from lab.runs import RunError, RunWriter
    if plan.run_dir is None:
        return RunWriter(args.out or runs_dir_default(), spec_name)
    try:
        return RunWriter.resume(plan.run_dir)
    except RunError as e:
        raise UsageError(str(e)) from None


def _train(args: argparse.Namespace, plan: _Plan, dist) -> tuple[int, bool]:
    """Load the data, train, save (rank 0) at every epoch's end and at the end: (exit
    status, whether the run ended the same way in every process)."""
    from lab.datasets import load_dataset
    from lab.runs import RunParts
    from presets import load_preset

    main = dist is None or dist.is_main
    settings, spec = plan.settings, plan.spec

    def load():
        return load_dataset(settings.dataset, settings.data_root, seed=settings.seed,
                            download=not args.no_download, image_size=plan.image_size,
                            train_size=plan.train_size, test_size=plan.test_size)
    if dist is None:
        ds = load()
    else:   # one process per machine downloads; the others then read its files
        if dist.local_rank == 0:
            ds = load()
        dist.barrier()
        if dist.local_rank != 0:
            ds = load()
    with _said_once(0 if dist is None else dist.rank):
        if spec is None:
            spec = load_preset(args.preset, input_shape=ds.input_shape, classes=len(ds.classes),
                               width=args.width)
        try:
            trainer = Trainer(spec, settings, ds, dist=dist, resume=plan.checkpoint,
                              stop_after=args.stop_after)
        except TrainingError as e:
            raise UsageError(str(e)) from None
        watcher = make_watcher(args, ds, trainer.model) if args.watch and main else None
    if main and trainer.start_weights and not args.json:
        w = trainer.start_weights
        print(f"weights from {w['source']}: {w['summary']}; {w['trainable_params']:,} parameters to train"
              + (" (backbone frozen)" if w["freeze"] == "backbone" else ""), flush=True)
    display = _Display(args.json) if main else _Silent()
    writer = _open_writer(args, plan, trainer.spec.get("name", "network")) if main else None
    load_args = {"train_size": plan.train_size, "test_size": plan.test_size, "image_size": plan.image_size}

    def parts() -> RunParts:
        return RunParts.from_trainer(trainer, load=load_args)
    end: dict = {}
    if plan.note:
        display.say(plan.note)
    try:
        with _ctrl_c_stops(trainer, display.say):
            for event in trainer.run():
                display.event(event)
                snap = watcher.on_event(event, trainer) if watcher is not None else None
                if snap is not None:
                    trainer.history.append(snap)    # saved with the run's events
                    display.event(snap)
                if event["type"] == "epoch":
                    # After the watch snapshot, so that the checkpoint's events hold it too.
                    checkpoint = trainer.checkpoint()       # every process: a collective
                    if writer is not None:
                        _save(writer, parts(), checkpoint, display, event["epoch"])
                elif event["type"] == "end":
                    end = event
        status = end.get("status")
        together = status != "failed"           # out of memory can happen in one process alone
        if not main:
            if status == "failed":
                print(f"error: process {dist.rank}: {end['message']}", file=sys.stderr)
            return (1 if status in ("diverged", "failed") else 0), together
        # A failed run (out of memory) keeps its folder as the last checkpoint left it.
        run_dir = None if status == "failed" else _save(writer, parts(), None, display, None)
    finally:
        if display.bar is not None:
            display.bar.close()
        if writer is not None:
            writer.close()
    if status != "failed" and run_dir is None:
        return 1, together
    if args.json:
        print(json.dumps({**end, "run_dir": None if run_dir is None else str(run_dir)}), flush=True)
    else:
        where = f"; run saved to {run_dir}" if run_dir else ""
        print(f"{end['status']}: test accuracy {_pct(end['test_acc'])} (best "
              f"{_pct(end['best_test_acc'])}), {end['epochs']:g} epoch(s), "
              f"{_num(end['images_per_sec'], ',.0f')} img/s{where}", flush=True)
    if status in ("diverged", "failed"):
        print(f"error: {end['message']}", file=sys.stderr)
        return 1, together
    return 0, together


def _save(writer, parts, checkpoint, display, epoch: int | None):
    """Write the run (with a checkpoint at an epoch's end); a disk that is full or gone is
    one line, and the folder keeps its previous complete state."""
    try:
        return writer.save(parts, checkpoint)
    except OSError as e:
        what = (f"the checkpoint after epoch {epoch}" if epoch is not None else "the run")
        reason = e.strerror or str(e)
        if epoch is not None:
            display.say(f"warning: {what} could not be written to {writer.path} ({reason}); "
                        f"the previous checkpoint is kept and training goes on")
        else:
            print(f"error: {what} could not be written to {writer.path} ({reason})", file=sys.stderr)
        return None
