"""The training engine: a spec, a dataset and settings in; a stream of events out.

`Trainer.run()` is a generator of plain JSON-able dicts ("start", "step", "epoch", "end"),
so the UI can draw curves as they come and `stop()` (from any thread) takes effect
between batches. The loop follows the habits of the fastest small-CNN trainers:

* a data set that fits (by size) lives on the device as uint8 and is batched there by a
  seeded permutation each epoch; a bigger one streams from host memory through a
  DataLoader. Either way normalisation and augmentation happen on the device per batch;
* metrics stay on the device and are read back once per report (every
  `report_interval` seconds and at the end of each epoch), never every step;
* on CUDA: autocast (bf16 where supported, else fp16 with a GradScaler), channels_last
  and cudnn.benchmark.

Under torchrun (`dist`, see lab/train/distributed.py) the same loop runs in every process on
its shard of each global batch, under DistributedDataParallel.

Global state: `torch.manual_seed(seed)` is called before the model is built (the
initialisation is part of what a seed reproduces), and again with a derived seed when
`run()` starts (dropout draws from that global generator). During `run()`
cudnn.benchmark is switched on and, when torch would start more CPU threads than this
process may use, the thread count is lowered; both are restored when the run ends, so
code running after it sees the settings it had before.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

import blocks
from blocks.summary import summarize
from lab.train.checkpoint import (FORMAT, Checkpoint, cpu_copy, global_rng_states,
                                  optimizer_from_flat, optimizer_to_flat, set_global_rng_states)
from lab.train.device import DEVICES, choose_device, device_name, synchronize, usable_cpus
from lab.train.precise_bn import batch_norms, recompute_bn_stats

if TYPE_CHECKING:
    from lab.datasets import Dataset
    from lab.train.distributed import Distributed

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
# Data sets up to this size (train + test, bytes) are copied to the device once.
MAX_DEVICE_BYTES = 1_500_000_000
ONECYCLE_WARMUP = 0.25      # fraction of the steps spent warming up
ONECYCLE_START = 1 / 25     # the warm-up starts at this fraction of lr (as torch's OneCycleLR)
DROPOUT_SEED_OFFSET = 0x5EED  # run() seeds the global generator with seed + this (+ rank)
# A training set on the device whose float32 copy fits this is normalised once, not per step.
PRENORMALIZE_BYTES = 256_000_000
GATHER_BYTES = 4_000_000     # on-device batches are gathered in blocks of about this size
SCORE_EVERY = 32            # steps whose outputs are kept before scoring them at once
PRECISE_BN_IMAGES = 1024    # default: training images PreciseBN averages over


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message is one line a user can act on."""


@dataclass
class TrainSettings:
    """Everything about a run except the network; JSON-able with `asdict`."""
    dataset: str = "shapes"
    data_root: str = "data"
    epochs: int = 5
    # Tuned with seed 0 on the CPU: LeNet-5 (sigmoids, no norm) reaches 96% on digits in 10
    # epochs and ResNet-18 + CBAM (width 0.25) 99.8% on shapes in 5; at batch 128 and
    # lr 2e-3 LeNet-5 ends at 58% and the ResNet is at 54% after 3 epochs.
    batch_size: int = 64
    optimizer: str = "adam"          # sgd | adam | adamw
    lr: float = 1e-2
    momentum: float = 0.9            # sgd only
    nesterov: bool = True            # sgd only
    weight_decay: float = 5e-4       # conv and linear weights only, not biases or norms
    schedule: str = "onecycle"       # onecycle | cosine | constant (per step)
    label_smoothing: float = 0.0
    augment: bool = False            # random flip + pad-and-crop, done on the device
    device: str = "auto"             # auto | cpu | cuda | mps
    seed: int = 0
    width: float | None = None       # overrides the spec's width when set
    sync_bn: bool = False            # torchrun on GPUs: BatchNorm statistics over all processes
    # Fine-tuning (lab/pretrained.py): start from "imagenet" or a weights file mapped onto the
    # preset by structure, with a new classifier; "backbone" trains only the new tensors.
    weights: str | None = None
    freeze: str = "none"             # none | backbone
    # Before every evaluation, BatchNorm statistics are recomputed over up to this many
    # training images with the weights fixed (PreciseBN, lab/train/precise_bn.py); 0: off.
    precise_bn: int = PRECISE_BN_IMAGES
    report_interval: float = 0.25    # seconds between step events

    def __post_init__(self) -> None:
        problem = _settings_problem(self)
        if problem:
            raise ValueError(problem)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        """Settings from JSON; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _settings_problem(s: TrainSettings) -> str:
    """The first thing wrong with the settings, as a sentence, or ""."""
    checks: list[tuple[bool, str]] = [
        (isinstance(s.dataset, str) and s.dataset.strip() != "", "dataset must be a name or a path"),
        (isinstance(s.data_root, str), "data_root must be a folder path"),
        (_is_int(s.epochs) and 1 <= s.epochs <= 10_000,
         f"epochs must be a whole number from 1 to 10000, got {s.epochs!r}"),
        (_is_int(s.batch_size) and 1 <= s.batch_size <= 65_536,
         f"batch size must be a whole number from 1 to 65536, got {s.batch_size!r}"),
        (s.optimizer in OPTIMIZERS,
         f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {s.optimizer!r}"),
        (_is_num(s.lr) and s.lr > 0, f"learning rate must be a positive number, got {s.lr!r}"),
        (_is_num(s.momentum) and 0 <= s.momentum < 1, f"momentum must be in [0, 1), got {s.momentum!r}"),
        (isinstance(s.nesterov, bool), f"nesterov must be true or false, got {s.nesterov!r}"),
        (_is_num(s.weight_decay) and s.weight_decay >= 0,
         f"weight decay must be a number >= 0, got {s.weight_decay!r}"),
        (s.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {s.schedule!r}"),
        (_is_num(s.label_smoothing) and 0 <= s.label_smoothing < 1,
         f"label smoothing must be in [0, 1), got {s.label_smoothing!r}"),
        (isinstance(s.augment, bool), f"augment must be true or false, got {s.augment!r}"),
        (isinstance(s.sync_bn, bool), f"sync_bn must be true or false, got {s.sync_bn!r}"),
        (_is_int(s.precise_bn) and 0 <= s.precise_bn <= 1_000_000,
         f"precise_bn must be a whole number of images from 0 to 1000000, got {s.precise_bn!r}"),
        (isinstance(s.device, str) and s.device.split(":", 1)[0] in DEVICES,
         f"device must be one of {', '.join(DEVICES)}, got {s.device!r}"),
        (_is_int(s.seed) and 0 <= s.seed < 2**63, f"seed must be a whole number >= 0, got {s.seed!r}"),
        (s.width is None or (_is_num(s.width) and 0 < s.width <= 4),
         f"width must be a number in (0, 4], got {s.width!r}"),
        (s.weights is None or (isinstance(s.weights, str) and s.weights.strip() != ""),
         "weights must be 'imagenet' or a file path"),
        (s.freeze in ("none", "backbone"), f"freeze must be none or backbone, got {s.freeze!r}"),
        (s.freeze == "none" or s.weights is not None,
         "freeze backbone needs starting weights (imagenet or a file) to keep"),
        (_is_num(s.report_interval) and s.report_interval >= 0,
         f"report interval must be a number of seconds >= 0, got {s.report_interval!r}"),
    ]
    return next((msg for ok, msg in checks if not ok), "")


# ---------------------------------------------------------------- pieces of a run

def lr_schedule(settings: TrainSettings, total_steps: int) -> list[float]:
    """The learning rate of every step (set per step; cheaper than an LRScheduler)."""
    lr, n = settings.lr, max(1, total_steps)
    if settings.schedule == "constant":
        return [lr] * n
    if settings.schedule == "cosine":
        return [lr * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    warm = max(1, round(ONECYCLE_WARMUP * n))
    out = []
    for i in range(n):
        if i < warm:
            out.append(lr * (ONECYCLE_START + (1 - ONECYCLE_START) * i / warm))
        else:
            out.append(lr * 0.5 * (1 + math.cos(math.pi * (i - warm + 1) / (n - warm + 1))))
    return out


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer; weight decay applies to weight matrices and kernels only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [g for g in ({"params": decay, "weight_decay": settings.weight_decay},
                          {"params": other, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise TrainingError("the network has no trainable parameters")
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0)
    cls = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    # The fused CUDA kernel updates every parameter in one launch.
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    return cls(groups, lr=settings.lr, fused=fused)


@dataclass(frozen=True)
class Precision:
    """How a device computes: autocast dtype (None = float32), scaler, memory format."""
    amp_dtype: torch.dtype | None
    use_scaler: bool
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device) -> "Precision":
        if device.type != "cuda":
            return cls(None, False, False)
        # Emulated bf16 (pre-Ampere GPUs) is slow; those get fp16 and a GradScaler.
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls(torch.bfloat16 if bf16 else torch.float16, not bf16, True)

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        if self.amp_dtype is None:
            null = contextlib.nullcontext()
            return lambda: null
        return lambda: torch.autocast(device_type=device.type, dtype=self.amp_dtype)


def augment_batch(x: torch.Tensor, flip: torch.Tensor, shift: torch.Tensor, pad: int) -> torch.Tensor:
    """Flip left-right where `flip` (N bools) and translate by `shift` (N×2 ints in
    [-pad, pad]) with zero padding — the pad-and-random-crop of the CIFAR ResNets, done
    as one gather on x's device. x is (N, C, H, W), already normalised (so 0 = mean)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = torch.arange(h, device=dev)[None, :] + (shift[:, 0:1] + pad)      # (N, H)
    cols = torch.arange(w, device=dev)[None, :] + (shift[:, 1:2] + pad)      # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]


class _Feed:
    """Batches of (normalised float32 images, labels) on the device, from a copy held there
    or from host memory through a DataLoader (pinned when the device is a GPU). A copy on
    the device is normalised once, whole, when `prenormalize` (the float32 copy is 4× the
    uint8 one, so only for sets within PRENORMALIZE_BYTES): normalising is elementwise, so
    the values are the same as normalising each batch, and a step saves those passes over
    its batch (a few percent of a small network's step on a CPU)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, on_device: bool,
                 normalize: Callable[[torch.Tensor], torch.Tensor], prenormalize: bool = False):
        self.device, self.on_device, self.size = device, on_device, len(y)
        self.normalize = normalize
        self.normalized = on_device and prenormalize
        if self.normalized:
            self.x = torch.empty(x.shape, dtype=torch.float32, device=device)
            for i in range(0, len(x), 4096):          # in chunks: no 3× float temporaries
                self.x[i:i + 4096] = normalize(x[i:i + 4096].to(device))
            self.y = y.to(device)
        elif on_device:
            self.x, self.y = x.to(device), y.to(device)
        else:
            self.x, self.y = x, y

    def _ready(self, xb: torch.Tensor) -> torch.Tensor:
        return xb if self.normalized else self.normalize(xb)

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`order`: CPU indices to visit (None = in order); batches of `batch_size`."""
        if self.on_device:
            if order is None:
                for i in range(0, self.size, batch_size):
                    yield self._ready(self.x[i:i + batch_size]), self.y[i:i + batch_size]
                return
            # Gathered a block of whole batches at a time (within GATHER_BYTES): two
            # index_selects per block instead of per step, then split into batches.
            order = order.to(self.device)
            image_bytes = self.x[:1].numel() * self.x.element_size()
            per = max(1, GATHER_BYTES // max(1, image_bytes * batch_size)) * batch_size
            for start in range(0, len(order), per):
                idx = order[start:start + per]
                xs, ys = self.x.index_select(0, idx), self.y.index_select(0, idx)
                for xb, yb in zip(xs.split(batch_size), ys.split(batch_size)):
                    yield self._ready(xb), yb
            return
        indices = range(self.size) if order is None else order.tolist()
        # Its own generator: a DataLoader otherwise draws a seed from torch's global one,
        # which would shift dropout's masks against the on-device path.
        loader = DataLoader(TensorDataset(self.x, self.y), batch_size=None,
                            sampler=BatchSampler(indices, batch_size, drop_last=False),
                            pin_memory=self.device.type == "cuda", generator=torch.Generator())
        for xb, yb in loader:
            yield (self.normalize(xb.to(self.device, non_blocking=True)),
                   yb.to(self.device, non_blocking=True))


def make_normalizer(dataset: "Dataset", device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """`dataset.normalize` with its mean and std made on the device once, not per batch
    (building them per batch costs a host-to-GPU copy, which synchronises, every step).
    Same formula and order of operations, so the result is identical."""
    c = len(dataset.mean)
    mean = torch.tensor(dataset.mean, dtype=torch.float32, device=device).view(c, 1, 1)
    std = torch.tensor(dataset.std, dtype=torch.float32, device=device).view(c, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - mean) / std
    return normalize


def _score(correct: torch.Tensor, outs: list[torch.Tensor], labels: list[torch.Tensor]) -> None:
    """Add the right answers among `outs` (logits) to `correct`, in a few batched ops; empties the lists."""
    if outs:
        correct += torch.cat(outs).argmax(1).eq(torch.cat(labels)).sum()
        outs.clear()
        labels.clear()


def _finite(v: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return float(v) if v is not None and math.isfinite(v) else None


def _best(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.cuda.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "DefaultCPUAllocator", "not enough memory"))


def prepare_spec(spec: dict, input_shape, classes: int, width: float | None = None) -> dict:
    """A copy of `spec` whose input and classes follow the data set (and width, if set)."""
    if not isinstance(spec, dict):
        raise blocks.SpecError(f"a spec must be a JSON object, got {type(spec).__name__}")
    out = dict(spec)
    out["input"] = [int(v) for v in input_shape]
    out["classes"] = int(classes)
    if width is not None:
        out["width"] = float(width)
    return out


# ---------------------------------------------------------------- the trainer

class Trainer:
    """Trains one network on one data set; see the module docstring.

    `max_device_bytes`: data sets larger than this stream through a DataLoader instead of
    being copied to the device (a test forces that path with a small value).
    `dist`: this process's place in a torchrun job (lab/train/distributed.py), or None. Then the
    network trains under DistributedDataParallel on `dist.device`, each process takes
    batch_size / world_size images of every global batch, and every reported number is
    summed over processes (so all of them see the same events). A report is a collective
    that every process must reach at the same step, so its spacing is counted in steps: each
    report sets the next from the mean step time, about `report_interval` seconds ahead.

    Checkpoints (lab/train/checkpoint.py): right after `run()` yields an "epoch" event,
    `checkpoint()` returns the run's whole state; `Trainer(..., resume=checkpoint)` goes on
    from there, bit for bit as if never stopped when `settings` are the run's own. With
    more `settings.epochs` than the run had planned, the remaining steps follow the
    learning-rate schedule of the new total. `stop_after=K` ends the run ("stopped") at the
    boundary after epoch K, in every process alike.
    """

    def __init__(self, spec: dict, settings: TrainSettings, dataset: "Dataset | None" = None,
                 *, max_device_bytes: int | None = None, dist: "Distributed | None" = None,
                 resume: Checkpoint | None = None, stop_after: int | None = None):
        if not isinstance(settings, TrainSettings):
            raise TypeError("settings must be a TrainSettings")
        self.settings = settings
        if dataset is None:
            from lab.datasets import load_dataset
            dataset = load_dataset(settings.dataset, settings.data_root, seed=settings.seed)
        self.dataset = dataset
        self.dist = dist
        self.world = 1 if dist is None else dist.world_size
        self.device = choose_device(settings.device) if dist is None else dist.device
        if settings.sync_bn and self.world > 1 and self.device.type != "cuda":
            raise TrainingError("--sync-bn needs GPUs (torch's SyncBatchNorm runs on CUDA only); "
                                "without it each process normalises with its own batch statistics")
        if settings.batch_size % self.world:
            raise TrainingError(f"batch size {settings.batch_size} cannot be split evenly over "
                                f"{self.world} processes; use a multiple of {self.world}")
        spec = prepare_spec(spec, dataset.input_shape, len(dataset.classes), settings.width)
        torch.manual_seed(settings.seed)    # the same initialisation in every process
        self.model: blocks.Network = blocks.build(spec, device=self.device)
        self.spec = self.model.spec
        self.start_weights: dict | None = None
        if settings.weights is not None:
            from lab.pretrained import start_from
            try:
                self.start_weights = start_from(self.model, settings.weights, settings.freeze)
            except ValueError as e:
                raise TrainingError(str(e)) from None
            if self.start_weights["mean"]:    # torchvision's weights expect its normalisation
                self.dataset = dataset = dataclasses.replace(
                    dataset, mean=tuple(self.start_weights["mean"]), std=tuple(self.start_weights["std"]))
        self.max_device_bytes = MAX_DEVICE_BYTES if max_device_bytes is None else max_device_bytes
        self.history: list[dict] = []
        self.precise_bn_s = 0.0     # seconds spent recomputing BatchNorm statistics
        self._stop = threading.Event()
        self._started = False
        n = len(dataset.train_y)
        if n == 0:
            raise TrainingError(f"data set '{dataset.name}' has no training images")
        if n < self.world:
            raise TrainingError(f"data set '{dataset.name}' has {n} training image(s), fewer "
                                f"than the {self.world} processes that would share them")
        b = settings.batch_size
        # Full batches only (the few images left over differ every epoch, as the order is
        # a fresh permutation); a data set smaller than one batch trains on one batch of all.
        self.steps_per_epoch = max(1, n // b)
        self.epoch_images = min(n, self.steps_per_epoch * b) // self.world * self.world
        self.total_steps = self.steps_per_epoch * settings.epochs
        if stop_after is not None and (not _is_int(stop_after) or stop_after < 1):
            raise TrainingError(f"stop after must be a whole number of epochs >= 1, got {stop_after!r}")
        self.stop_after = stop_after
        self._resume = resume
        self._boundary: tuple[int, int, int] | None = None   # (epoch, step, report_in) at an epoch event
        self._loop: dict = {}
        if resume is not None:
            self._check_resume(resume)
            try:
                self.model.load_state_dict(resume.model_state(), strict=True)
            except RuntimeError as e:
                raise TrainingError(f"the checkpoint's weights do not fit the network: "
                                    f"{' '.join(str(e).split())[:200]}") from None

    def _check_resume(self, ck: Checkpoint) -> None:
        meta, s = ck.meta, self.settings
        if meta.get("format") != FORMAT:
            raise TrainingError(f"the checkpoint has format {meta.get('format')!r}; this version reads {FORMAT}")
        if meta.get("steps_per_epoch") != self.steps_per_epoch:
            raise TrainingError(
                f"the checkpoint was taken at {meta.get('steps_per_epoch')} steps per epoch and this "
                f"run has {self.steps_per_epoch} (another data set size or batch size); resume with "
                f"the run's own settings")
        if ck.step != ck.epoch * self.steps_per_epoch:
            raise TrainingError(f"the checkpoint's step {ck.step} is not the end of its epoch {ck.epoch}")
        if ck.epoch >= s.epochs:
            raise TrainingError(f"the run has already trained {ck.epoch} of {s.epochs} epochs; "
                                f"ask for more epochs to continue it")

    # -- public API

    def checkpoint(self) -> Checkpoint:
        """The run's state at the epoch boundary it is paused at: call it right after
        `run()` yielded an "epoch" event (and before asking for the next one). Under
        torchrun every process must call it: each process's global generator is gathered
        (a collective), so the checkpoint holds all of them."""
        if self._boundary is None:
            raise TrainingError("a checkpoint can only be taken right after an epoch event")
        epoch, step, report_in = self._boundary
        loop, p, s = self._loop, self._progress, self.settings
        tensors = {f"model.{k}": cpu_copy(v) for k, v in self.model.state_dict().items()}
        opt_tensors, opt_meta = optimizer_to_flat(loop["optimizer"].state_dict())
        tensors.update(opt_tensors)
        tensors["rng.order"] = loop["perm_gen"].get_state()
        tensors["rng.augment"] = loop["aug_gen"].get_state()
        for name, state in global_rng_states(self.device).items():
            per_rank = [state] if self.dist is None else self.dist.gather(state)
            for rank, t in enumerate(per_rank):
                tensors[f"rng.global.{name}.{rank}"] = t
        scaler = loop["scaler"]
        meta = {
            "format": FORMAT, "epoch": epoch, "step": step, "epochs": s.epochs,
            "steps_per_epoch": self.steps_per_epoch, "processes": self.world,
            "report_in": report_in, "settings": s.to_dict(),
            "progress": {k: p.get(k) for k in ("steps", "train_loss", "test_acc", "best", "images",
                                               "train_time", "evaluated_at")},
            "elapsed_s": time.perf_counter() - p["t0"],
            "optimizer": opt_meta, "scaler": None if scaler is None else scaler.state_dict(),
            "resumes": list(self._resume.meta.get("resumes", [])) + [self._resumed_from]
            if self._resume is not None else [],
            "events": list(self.history)}
        return Checkpoint(tensors, meta)

    def stop(self) -> None:
        """Ask the run to end before its next batch (thread-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def data_on_device(self) -> bool:
        """Whether the data set is copied to the device (else it streams from the host)."""
        ds = self.dataset
        size = sum(t.numel() * t.element_size() for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y))
        return size <= self.max_device_bytes

    def run(self) -> Iterator[dict]:
        """Train; yields "start", "step", "epoch" and finally one "end" event."""
        if self._started:
            raise TrainingError("this trainer has already run; make a new one to train again")
        self._started = True
        benchmark = torch.backends.cudnn.benchmark
        threads = torch.get_num_threads()
        self._progress = {"steps": 0, "train_loss": None, "test_acc": None, "best": None,
                          "images": 0, "train_time": 0.0, "t0": time.perf_counter()}
        failed = False
        try:
            if self.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            if self.device.type == "cpu" and threads > usable_cpus():
                torch.set_num_threads(usable_cpus())
            try:
                yield from self._run()
            except RuntimeError as e:
                if not _is_oom(e) or isinstance(e, TrainingError):
                    raise
                failed = True      # not the exception: its traceback would pin the tensors
            if failed:
                # The training frame (and its tensors) is gone now; give memory back first.
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                what = "GPU" if self.device.type == "cuda" else "memory"
                message = (f"ran out of {what} at batch size {self.settings.batch_size}; "
                           f"try a smaller batch size or width")
                yield self._emit(self._end_event("failed", message))
        finally:
            torch.backends.cudnn.benchmark = benchmark
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    # -- the loop

    def _emit(self, event: dict) -> dict:
        self.history.append(event)
        return event

    def _end_event(self, status: str, message: str) -> dict:
        p = self._progress
        return {"type": "end", "status": status, "message": message,
                "epochs": round(p["steps"] / self.steps_per_epoch, 4),
                "train_loss": _finite(p["train_loss"]), "test_acc": _finite(p["test_acc"]),
                "images_per_sec": _finite(p["images"] / p["train_time"]) if p["train_time"] > 0 else None,
                "best_test_acc": _finite(p["best"]),
                "elapsed_s": round(time.perf_counter() - p["t0"], 3)}

    def _run(self) -> Iterator[dict]:
        s, ds, dev, model = self.settings, self.dataset, self.device, self.model
        p = self._progress
        precision = Precision.for_device(dev)
        autocast = precision.autocast(dev)
        if precision.channels_last:
            model.to(memory_format=torch.channels_last)
        on_device = self.data_on_device()
        normalize = self._normalize = make_normalizer(ds, dev)
        fits = 4 * ds.train_x.numel() <= PRENORMALIZE_BYTES
        train = _Feed(ds.train_x, ds.train_y, dev, on_device, normalize, prenormalize=fits)
        test = _Feed(ds.test_x, ds.test_y, dev, on_device, normalize)
        optimizer = make_optimizer(model, s)
        dist, world = self.dist, self.world
        net = model if dist is None else dist.wrap(model, sync_bn=s.sync_bn)
        scaler = torch.amp.GradScaler(dev.type) if precision.use_scaler else None
        # The schedule for the planned total; a resumed run with more epochs than it had
        # planned follows the new total's schedule from where it is.
        lrs = lr_schedule(s, self.total_steps)
        criterion = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
        perm_gen = torch.Generator().manual_seed(s.seed)
        aug_gen = torch.Generator().manual_seed(s.seed + 1)
        h, w = ds.input_shape[1], ds.input_shape[2]
        pad = max(1, round(min(h, w) / 8))
        channels_last = precision.channels_last
        summary = summarize(self.spec)
        # Dropout draws from torch's global generator: seed it here, so the masks do not
        # depend on what ran since the model was built, and differ between processes.
        torch.manual_seed(s.seed + DROPOUT_SEED_OFFSET + (dist.rank if dist else 0))
        self._loop = {"optimizer": optimizer, "scaler": scaler, "perm_gen": perm_gen, "aug_gen": aug_gen}
        first_epoch, step = 1, 0
        report_in = 1       # under torchrun: steps to the next report (first after one step)
        start = {
            "type": "start", "device": str(dev), "device_name": device_name(dev),
            "params": sum(q.numel() for q in model.parameters()), "flops": int(summary.flops),
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "train_size": len(ds.train_y), "test_size": len(ds.test_y),
            "classes": list(ds.classes), "data_on_device": on_device,
            "processes": world, "batch_per_process": s.batch_size // world,
            "start_weights": self.start_weights}
        if self._resume is None:
            yield self._emit(start)
        else:
            # The run's own events so far are the history; this start event is only yielded
            # (for progress displays), so the record reads as one uninterrupted run.
            first_epoch, step, report_in = self._restore(self._resume)
            yield {**start, "resumed_from": self._resumed_from}

        b, spe = s.batch_size // world, self.steps_per_epoch     # b: this process's share
        interval = s.report_interval
        halt = False        # under torchrun: the stop all processes agreed on at the last report
        groups = optimizer.param_groups
        epoch_losses, correct, seen = [], None, 0     # of the epoch in progress
        model.train()
        for epoch in range(first_epoch, s.epochs + 1):
            if halt if dist else self._stop.is_set():
                break
            if self.stop_after is not None and epoch > self.stop_after:
                break
            # Every process draws the same order and flips, then takes its shard of them.
            order = torch.randperm(len(ds.train_y), generator=perm_gen)[:self.epoch_images]
            if s.augment:
                flips = torch.rand(self.epoch_images, generator=aug_gen) < 0.5
                shifts = torch.randint(-pad, pad + 1, (self.epoch_images, 2), generator=aug_gen)
                if dist:
                    flips, shifts = dist.shard(flips), dist.shard(shifts)
                flips, shifts = flips.to(dev), shifts.to(dev)
            if dist:
                order = dist.shard(order)
            # The epoch's right answers, counted on the device: each step only keeps its
            # (detached) outputs and labels; they are scored in one batch every
            # SCORE_EVERY steps and at the epoch's end (no read-back until then).
            correct = torch.zeros((), dtype=torch.long, device=dev)
            outs: list[torch.Tensor] = []
            labels: list[torch.Tensor] = []
            epoch_losses = []
            pending: list[torch.Tensor] = []        # per-step losses not yet read back
            t_epoch = t_report = time.perf_counter()
            images_report = 0
            epoch_steps = seen = 0
            for x, yb in train.batches(order, b):
                if halt if dist else self._stop.is_set():
                    break
                for g in groups:
                    g["lr"] = lrs[step]
                if s.augment:
                    lo = epoch_steps * b
                    x = augment_batch(x, flips[lo:lo + len(yb)], shifts[lo:lo + len(yb)], pad)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    out = net(x)
                    loss = criterion(out, yb)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                pending.append(loss.detach())
                outs.append(out.detach())
                labels.append(yb)
                if len(outs) >= SCORE_EVERY:
                    _score(correct, outs, labels)
                step += 1
                epoch_steps += 1
                seen += len(yb) * world
                images_report += len(yb) * world
                last = epoch_steps == spe
                now = time.perf_counter()
                if dist is not None:
                    report_in -= 1
                    if not (last or report_in <= 0):
                        continue
                    # A collective: every process gets here at the same step, and gets the
                    # same losses, stop decision and mean step time back.
                    values, halt, step_time = self._reduce_report(pending, now - t_report)
                    report_in = max(1, min(10_000, int(interval / max(step_time, 1e-9))))
                elif last or now - t_report >= interval:
                    values = torch.stack(pending).float().tolist()   # the one read-back (a sync)
                else:
                    continue
                now = time.perf_counter()
                p["steps"], p["images"] = step, p["images"] + images_report
                bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
                if bad is not None:
                    p["train_time"] += now - t_epoch
                    bad_step = step - len(values) + bad + 1
                    p["train_loss"], p["test_acc"] = values[bad], None
                    yield self._emit(self._end_event("diverged", (
                        f"loss became {values[bad]} at step {bad_step} (epoch {epoch}); "
                        f"try a lower learning rate than {s.lr:g}")))
                    return
                epoch_losses.extend(values)
                p["train_loss"] = sum(values) / len(values)
                elapsed = now - p["t0"]
                yield self._emit({
                    "type": "step", "step": step, "epoch": round(step / spe, 4),
                    "loss": p["train_loss"], "lr": lrs[step - 1],
                    "images_per_sec": images_report / max(now - t_report, 1e-9),
                    "eta_s": round(elapsed / step * (self.total_steps - step), 2),
                    "progress": round(step / self.total_steps, 6)})
                pending.clear()
                images_report = 0
                t_report = time.perf_counter()
            if pending:  # stopped mid-window: keep those losses in the record
                values = torch.stack(pending).float().tolist()
                epoch_losses.extend(values)
                p["steps"], p["images"] = step, p["images"] + images_report
                p["train_loss"] = sum(values) / len(values)
            _score(correct, outs, labels)
            synchronize(dev)
            if dist:
                dist.sum(correct)
            train_time = time.perf_counter() - t_epoch
            p["train_time"] += train_time
            if pending and not math.isfinite(p["train_loss"]):
                p["test_acc"] = None
                yield self._emit(self._end_event("diverged", (
                    f"loss became {p['train_loss']} by step {step} (epoch {epoch}); "
                    f"try a lower learning rate than {s.lr:g}")))
                return
            if epoch_steps < spe:        # stopped inside the epoch
                break
            self._precise_bn(train, order, b, autocast, channels_last)
            test_loss, test_acc = self._evaluate(test, autocast, channels_last)
            p["test_acc"], p["best"] = test_acc, _best(p["best"], test_acc)
            p["evaluated_at"] = step
            self._boundary = (epoch, step, report_in)      # checkpoint() may be called now
            yield self._emit({
                "type": "epoch", "epoch": epoch,
                "train_loss": _finite(sum(epoch_losses) / len(epoch_losses)),
                "train_acc": correct.item() / seen,
                "test_loss": _finite(test_loss), "test_acc": _finite(test_acc),
                "images_per_sec": _finite(seen / max(train_time, 1e-9)),
                "elapsed_s": round(time.perf_counter() - p["t0"], 3), "lr": lrs[step - 1]})
            self._boundary = None
        if step == self.total_steps:
            yield self._emit(self._end_event("completed", f"trained {s.epochs} epoch(s)"))
            return
        if p.get("evaluated_at") != step:
            # Stopped inside an epoch: the final evaluation is an event like an epoch's, so
            # the curves, the CSV and the end event all tell the same numbers.
            if step:
                self._precise_bn(train, order, b, autocast, channels_last)
            test_loss, test_acc = self._evaluate(test, autocast, channels_last)
            p["test_acc"], p["best"] = test_acc, _best(p["best"], test_acc)
            yield self._emit({
                "type": "eval", "step": step, "epoch": round(step / spe, 4),
                "train_loss": _finite(sum(epoch_losses) / len(epoch_losses)) if epoch_losses else None,
                "train_acc": correct.item() / seen if seen else None,
                "test_loss": _finite(test_loss), "test_acc": _finite(test_acc),
                "elapsed_s": round(time.perf_counter() - p["t0"], 3),
                "lr": lrs[step - 1] if step else None})
        yield self._emit(self._end_event(
            "stopped", f"stopped after {step} of {self.total_steps} steps "
                       f"({step / spe:.2f} epochs)"))

    def _restore(self, ck: Checkpoint) -> tuple[int, int, int]:
        """Put the loop's state back as `ck` holds it: (first epoch, step, report_in).
        Called in `_run` once the optimizer and generators exist (the model's weights were
        loaded in __init__)."""
        loop, meta, dev = self._loop, ck.meta, self.device
        state = optimizer_from_flat(ck.tensors, meta["optimizer"])
        # How the update is computed (fused kernel, foreach) follows this device, not the saved one.
        for saved, live in zip(state["param_groups"], loop["optimizer"].param_groups):
            saved.update({k: live[k] for k in ("fused", "foreach", "capturable") if k in live})
        loop["optimizer"].load_state_dict(state)
        if loop["scaler"] is not None and meta.get("scaler"):
            loop["scaler"].load_state_dict(meta["scaler"])
        loop["perm_gen"].set_state(ck.tensors["rng.order"])
        loop["aug_gen"].set_state(ck.tensors["rng.augment"])
        rank = 0 if self.dist is None else self.dist.rank
        same_world = meta.get("processes") == self.world
        if same_world:
            states = {name: ck.tensors[f"rng.global.{name}.{rank}"] for name in ("cpu", "cuda", "mps")
                      if f"rng.global.{name}.{rank}" in ck.tensors}
            set_global_rng_states(states, dev)
        else:
            # Another number of processes: the data order goes on exactly, dropout's masks
            # are drawn from a fresh seed per process.
            torch.manual_seed(self.settings.seed + DROPOUT_SEED_OFFSET + rank + 7919 * ck.epoch)
        self.history = ck.events
        p = self._progress
        p.update({k: v for k, v in meta["progress"].items()})
        p["t0"] = time.perf_counter() - float(meta.get("elapsed_s", 0.0))
        self._resumed_from = {"epoch": ck.epoch, "step": ck.step, "planned_epochs": meta.get("epochs"),
                              "epochs": self.settings.epochs, "exact": same_world and
                              meta.get("epochs") == self.settings.epochs}
        return ck.epoch + 1, ck.step, int(meta.get("report_in", 1))

    def _reduce_report(self, losses: list[torch.Tensor], seconds: float) -> tuple[list[float], bool, float]:
        """Under torchrun: the per-step losses averaged over processes, whether any process
        was asked to stop, and the mean seconds per step since the last report (`seconds`
        over len(losses) steps here) — one all-reduce, the same answer everywhere."""
        extra = torch.tensor([float(self._stop.is_set()), seconds / len(losses)], device=self.device)
        packed = self.dist.sum(torch.cat([torch.stack(losses).float(), extra]))
        *values, stops, step_time = packed.tolist()
        return [v / self.world for v in values], stops > 0, step_time / self.world

    def _precise_bn(self, train: _Feed, order: torch.Tensor, batch: int, autocast,
                    channels_last: bool) -> None:
        """Recompute the BatchNorm statistics over up to `settings.precise_bn` training
        images (the first of this epoch's order, in training batches, unaugmented) with the
        weights fixed; under torchrun each process uses its shard and the statistics are
        averaged over processes. Adds its seconds to `self.precise_bn_s`."""
        limit = self.settings.precise_bn // self.world
        if limit <= 0 or not any(m.training for m in batch_norms(self.model)):
            return      # none, or all frozen (fine-tuning keeps their statistics)
        t0 = time.perf_counter()
        # Whole batches only: a last batch of a few images would give noisy variances.
        n = min(len(order), max(batch, limit // batch * batch))

        def inputs() -> Iterator[torch.Tensor]:
            for x, _ in train.batches(order[:n], batch):
                yield x.contiguous(memory_format=torch.channels_last) if channels_last else x

        # Dropout draws in the pass must not shift the training's masks: a run with PreciseBN
        # trains the same weights as one without; only the statistics differ.
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), autocast():
            recompute_bn_stats(self.model, inputs())
        if self.dist:
            for m in batch_norms(self.model):
                if not m.training:
                    continue
                for buffer in (m.running_mean, m.running_var):
                    buffer.copy_(self.dist.sum(buffer.clone()) / self.world)
        synchronize(self.device)
        self.precise_bn_s += time.perf_counter() - t0

    def _evaluate(self, test: _Feed, autocast, channels_last: bool) -> tuple[float | None, float | None]:
        """(mean loss, accuracy) on the test set: eval mode, no grad, batched on the device.
        Under torchrun each process evaluates its shard with rank 0's BatchNorm statistics
        (the network rank 0 saves) and the sums are reduced."""
        if test.size == 0:
            return None, None
        model, dist = self.model, self.dist
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, device=self.device)   # loss, correct (exact to 2**24 images)
        order = None
        if dist:
            dist.broadcast_buffers(model)
            order = dist.shard(torch.arange(test.size))
        try:
            with torch.no_grad():
                for x, yb in test.batches(order, 2 * self.settings.batch_size):
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast():
                        out = model(x)
                    sums[0] += F.cross_entropy(out.float(), yb, reduction="sum")
                    sums[1] += (out.argmax(1) == yb).sum()
        finally:
            model.train(was_training)
        if dist:
            dist.sum(sums)
        loss_sum, correct = sums.tolist()
        return loss_sum / test.size, correct / test.size
