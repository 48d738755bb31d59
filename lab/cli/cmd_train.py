"""`python -m lab train`: train a preset or a spec file on a data set and save the run.

A progress bar goes to stderr on a terminal; `--json` prints one JSON object per event
to stdout, the last being the "end" event plus `run_dir`. Ctrl-C stops after the
current batch and still saves the run (a second Ctrl-C aborts).

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
from typing import Iterator

from lab.cli import UsageError
from lab.cli.cmd_summary import read_spec_file
from lab.train.device import DEVICES, choose_device
from lab.train.trainer import OPTIMIZERS, SCHEDULES, Trainer, TrainingError, TrainSettings

DATASET_HELP = "shapes, digits, mnist, fashion-mnist, cifar10, or a path"


def add_parser(subparsers) -> None:
    d = TrainSettings()
    p = subparsers.add_parser("train", help="train a network and save the run",
                              description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", metavar="NAME", help="a preset name (`python -m lab presets`)")
    which.add_argument("--spec", metavar="FILE", help="a network spec (JSON file)")
    p.add_argument("--dataset", default=d.dataset, help=f"{DATASET_HELP} (default {d.dataset})")
    p.add_argument("--data-root", default=d.data_root, metavar="DIR",
                   help=f"where data sets are kept (default {d.data_root}/)")
    p.add_argument("--no-download", action="store_true",
                   help="never download; fail if the data set's files are missing")
    p.add_argument("--train-size", type=int, metavar="N", help="use only N training images")
    p.add_argument("--test-size", type=int, metavar="N", help="use only N test images")
    p.add_argument("--epochs", type=int, default=d.epochs, metavar="N")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="B",
                   help=f"global batch; under torchrun split evenly over the processes "
                        f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, metavar="X", help="(peak) learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="X")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="X")
    p.add_argument("--augment", action="store_true", help="random flips and pad-and-crop")
    p.add_argument("--width", type=float, metavar="W", help="channel width multiplier")
    p.add_argument("--input", metavar="CxHxW",
                   help="resize the data set's images to this square size, e.g. 3x128x128")
    p.add_argument("--weights", metavar="FILE|imagenet",
                   help="fine-tune: start from 'imagenet' (torchvision's weights for the preset) or a "
                        ".pth / .safetensors file; the classifier is new, images take the weights' "
                        "normalisation")
    p.add_argument("--freeze", choices=("none", "backbone"), default=d.freeze,
                   help="with --weights: 'backbone' trains only the new tensors (classifier, SE/CBAM); "
                        "frozen BatchNorm keeps its statistics")
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over all processes")
    p.add_argument("--out", default="runs", metavar="DIR", help="where runs are saved (default runs/)")
    p.add_argument("--watch", choices=("gradcam", "cbam", "se", "features", "ghost"), metavar="VIEW",
                   help="record this view (gradcam, cbam, se, features, ghost) of one test image at "
                        "every epoch end, on a copy of the weights; saved in the run's metrics")
    p.add_argument("--watch-index", type=int, default=0, metavar="N", help="the test image to watch")
    p.add_argument("--watch-layer", metavar="NAME", help="the layer to watch (default: the view's own)")
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
    return Watcher(compute, index=args.watch_index)


def _settings(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(dataset=args.dataset, data_root=args.data_root, epochs=args.epochs,
                         batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         momentum=args.momentum, weight_decay=args.weight_decay,
                         schedule=args.schedule, label_smoothing=args.label_smoothing,
                         augment=args.augment, device=args.device, seed=args.seed,
                         width=args.width, sync_bn=args.sync_bn, weights=args.weights,
                         freeze=args.freeze)


def _image_size(args: argparse.Namespace) -> int | None:
    """The square side --input asks for (None: the data set's own size)."""
    if args.input is None:
        return None
    from lab.cli.cmd_summary import parse_shape
    c, h, w = parse_shape(args.input)
    if h != w:
        raise UsageError(f"--input must be square (the images are resized to one side), got {args.input}")
    return h


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
            if sys.stderr.isatty():
                from tqdm import tqdm
                self.bar = tqdm(total=e["total_steps"], file=sys.stderr, unit="step",
                                dynamic_ncols=True, leave=True)
            if not self.as_json:
                procs = e.get("processes", 1)
                where = e["device_name"] if procs == 1 else f"{procs} processes ({e['device_name']})"
                self.say(f"training on {where}: {e['params']:,} parameters, "
                         f"{e['train_size']:,} training / {e['test_size']:,} test images, "
                         f"{e['total_steps']:,} steps")
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
        settings = _settings(args)                  # ValueError -> one line, exit 2
        _positive("--train-size", args.train_size)
        _positive("--test-size", args.test_size)
        _image_size(args)
        spec = read_spec_file(args.spec) if args.spec else None
        if args.preset:
            get_preset(args.preset)                 # unknown names fail before data loads
        if world == 1:
            choose_device(settings.device)
    if world == 1:
        return _train(args, settings, spec, None)[0]
    try:
        dist = distributed.setup(settings.device)   # may differ by process: each one says
    except distributed.DistributedError as e:
        raise UsageError(str(e)) from None
    try:
        code, together = _train(args, settings, spec, dist)
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


def _train(args: argparse.Namespace, settings: TrainSettings, spec: dict | None,
           dist) -> tuple[int, bool]:
    """Load the data, train, save (rank 0): (exit status, whether the run ended the same
    way in every process)."""
    from lab.datasets import load_dataset
    from lab.runs import save_run
    from presets import load_preset

    main = dist is None or dist.is_main

    def load():
        return load_dataset(args.dataset, args.data_root, seed=args.seed,
                            download=not args.no_download, image_size=_image_size(args),
                            train_size=args.train_size, test_size=args.test_size)
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
            trainer = Trainer(spec, settings, ds, dist=dist)
        except TrainingError as e:
            raise UsageError(str(e)) from None
        watcher = make_watcher(args, ds, trainer.model) if args.watch and main else None
    if main and trainer.start_weights and not args.json:
        w = trainer.start_weights
        print(f"weights from {w['source']}: {w['summary']}; {w['trainable_params']:,} parameters to train"
              + (" (backbone frozen)" if w["freeze"] == "backbone" else ""), flush=True)
    display = _Display(args.json) if main else _Silent()
    end: dict = {}
    try:
        with _ctrl_c_stops(trainer, display.say):
            for event in trainer.run():
                display.event(event)
                if event["type"] == "end":
                    end = event
                snap = watcher.on_event(event, trainer) if watcher is not None else None
                if snap is not None:
                    trainer.history.append(snap)    # saved with the run's events
                    display.event(snap)
    finally:
        if display.bar is not None:
            display.bar.close()
    status = end.get("status")
    together = status != "failed"           # out of memory can happen in one process alone
    if not main:
        if status == "failed":
            print(f"error: process {dist.rank}: {end['message']}", file=sys.stderr)
        return (1 if status in ("diverged", "failed") else 0), together
    run_dir = None if status == "failed" else save_run(trainer, args.out)
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
