"""Speed measured as ratios (`python -m lab bench`).

A case is a named function `fn(options) -> dict`; `register_case` adds one (the
inspection timings and the torchrun case, one process against N, plug in here). The
training cases run one model on one batch stream through `Trainer` (reports on, as in use)
and through a bare PyTorch loop (zero_grad, forward, loss, backward, step over pre-made,
pre-normalised batches already on the device), finely interleaved — while the Trainer waits
at each report, the bare loop runs as many steps — so that drift in a shared machine's
speed falls on both sides; they report both images per second and their ratio (medians
over many chunk pairs, with the middle half of the ratios, so a burst of other work does
not decide the figure).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

import blocks
from lab.train.device import choose_device, device_name, synchronize
from lab.train.trainer import Precision, Trainer, TrainSettings, make_optimizer, prepare_spec


@dataclass(frozen=True)
class BenchOptions:
    """What every case is told: how long to measure, where, and with which data."""
    quick: bool = False
    device: str = "auto"
    data_root: str = "data"
    rounds: int | None = None          # None: 5 (3 when quick)
    round_seconds: float | None = None  # target time of one timed round; None: 2 (1 when quick)

    @property
    def n_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (3 if self.quick else 5)

    @property
    def seconds(self) -> float:
        return self.round_seconds if self.round_seconds is not None else (1.0 if self.quick else 2.0)

    @property
    def min_steps(self) -> int:
        """Timed steps per round at least (slow models get fewer than `seconds` asks)."""
        return 3 if self.quick else 5


Case = Callable[[BenchOptions], dict]
# Rounds (for training cases: the middle half of the pairs) whose ratios differ by more than
# this factor mean the machine was busy with other work.
NOISY_SPREAD = 1.15
# The bare loop's pre-made batches: as many of the data set's as fit in this many bytes
# (cycling a few batches over and over trains a network unlike the Trainer's run).
BARE_BYTES = 64_000_000
_CASES: dict[str, Case] = {}


def register_case(name: str, fn: Case) -> None:
    """Add a bench case; a second case of one name is refused (ValueError)."""
    if name in _CASES:
        raise ValueError(f"a bench case named '{name}' is already registered")
    _CASES[name] = fn


def case_names() -> list[str]:
    return list(_CASES)


def run_cases(options: BenchOptions, names: list[str] | None = None,
              on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the named cases (all by default), in registration order."""
    unknown = [n for n in names or [] if n not in _CASES]
    if unknown:
        raise ValueError(f"unknown bench case '{unknown[0]}'; cases: {', '.join(_CASES)}")
    results = []
    for name, fn in _CASES.items():
        if names and name not in names:
            continue
        result = {"name": name, **fn(options)}
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


# ---------------------------------------------------------------- training: Trainer vs bare loop

def _tiled(ds, n_train: int, n_test: int):
    """The data set with exactly n_train training images (repeated if it has fewer) and
    n_test test images, so one epoch is exactly the steps to time."""
    idx = torch.arange(n_train) % len(ds.train_y)
    return dataclasses.replace(ds, train_x=ds.train_x[idx], train_y=ds.train_y[idx],
                               test_x=ds.test_x[:n_test], test_y=ds.test_y[:n_test],
                               train_masks=None, test_masks=None)


class _BareLoop:
    """The bare PyTorch loop: zero_grad, forward, loss, backward, step over pre-made,
    pre-normalised batches already on the device (those of the data set within BARE_BYTES, cycled)."""

    def __init__(self, spec: dict, ds, settings: TrainSettings, device: torch.device):
        torch.manual_seed(settings.seed)
        self.device = device
        self.model = blocks.build(spec, device=device)
        precision = Precision.for_device(device)
        self.autocast = precision.autocast(device)
        fmt = torch.channels_last if precision.channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt).train()
        self.optimizer = make_optimizer(self.model, settings)
        self.scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
        self.criterion = nn.CrossEntropyLoss()
        self.b = b = settings.batch_size
        per_batch = ds.train_x[:b].numel() * 4
        n = max(1, min(len(ds.train_y) // b, BARE_BYTES // max(1, per_batch)))
        self.batches = [(ds.normalize(ds.train_x[i * b:(i + 1) * b].to(device)).contiguous(memory_format=fmt),
                         ds.train_y[i * b:(i + 1) * b].to(device)) for i in range(n)]
        self.i = 0

    def steps(self, n: int) -> float:
        """Seconds of `n` steps (synchronised at both ends)."""
        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = self.batches[self.i % len(self.batches)]
            self.i += 1
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.criterion(self.model(x), y)
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
        synchronize(self.device)
        return time.perf_counter() - t0


def compare_training(spec: dict, ds, options: BenchOptions, batch_size: int | None = None,
                     warmup: int = 3) -> dict:
    """Trainer vs bare loop on the same model, data and device, finely interleaved.

    The Trainer runs as in use, with reports `report_interval` (0.25 s) apart, or
    `options.round_seconds` when set; while it waits at
    each step event (its generator is suspended), the bare loop runs as many steps as the
    Trainer did since its previous report. So the timeline is bare, Trainer, bare, Trainer,
    … in chunks of that length (so close in time that a shared machine's bursts of other
    work mostly fall on both sides of a pair), and each Trainer chunk is compared with the mean rate of the
    bare chunks either side of it: drift in a shared machine's speed falls on both sides.
    Chunks that span the end of an epoch (evaluation, PreciseBN) and the first one (one-off
    costs) are not counted. `options.rounds` chunk pairs are measured (default 60, 20 when
    quick); the figures are medians over them."""
    batch_size = batch_size or TrainSettings.batch_size
    device = choose_device(options.device)
    spec = prepare_spec(spec, ds.input_shape, len(ds.classes))
    pairs = options.rounds if options.rounds is not None else (20 if options.quick else 60)
    seconds = options.round_seconds or TrainSettings.report_interval
    # A constant learning rate on both sides: the same numerics (a sigmoid network's step
    # takes longer once its units saturate, so the two loops must train alike).
    base = TrainSettings(device=str(device), batch_size=batch_size, epochs=1, lr=1e-3, schedule="constant",
                         report_interval=seconds)
    bare = _BareLoop(spec, ds, base, device)
    bare.steps(max(1, warmup))
    # Calibrate: steps per chunk, and enough epochs for the pairs.
    n = 2
    while True:
        secs = bare.steps(n)
        if secs >= 0.25 or n >= 64:
            break
        n *= 4
    per_step = max(secs / n, 1e-6)
    chunk = max(1, math.ceil(seconds / per_step))
    total = warmup + (pairs + 3) * chunk * 2
    # Epochs as long as the data set's, but at least 8 chunks (an epoch's end is not counted)
    # and at most 1,024 steps.
    epoch_steps = max(1, min(total, 1024, max(len(ds.train_y) // batch_size, 8 * chunk)))
    data = _tiled(ds, epoch_steps * batch_size, batch_size)
    settings = dataclasses.replace(base, epochs=min(10_000, math.ceil(total / epoch_steps)))
    records: list[dict] = []        # per Trainer chunk: steps, seconds, bare chunk before
    bare_rates: list[float] = []
    for _ in range(4):              # a Trainer that ends before enough pairs is followed by another
        run = Trainer(spec, settings, data).run()
        prev = None                 # (step, time) at the last step event, if nothing came between
        try:
            for event in run:
                now = time.perf_counter()
                if event["type"] == "end" and event["status"] not in ("completed", "stopped"):
                    raise RuntimeError(f"the bench run ended '{event['status']}': {event['message']}")
                if event["type"] != "step":
                    prev = None
                    continue
                if prev is not None and prev[0] >= warmup and bare_rates:
                    records.append({"steps": event["step"] - prev[0], "seconds": now - prev[1],
                                    "before": len(bare_rates) - 1})
                steps = records[-1]["steps"] if records else chunk
                bare_rates.append(steps * batch_size / bare.steps(steps))
                if len(records) >= pairs:
                    break
                prev = (event["step"], time.perf_counter())
        finally:
            run.close()
        if len(records) >= pairs:
            break
    rounds = []
    for r in records:
        trainer = r["steps"] * batch_size / r["seconds"]
        around = statistics.mean(bare_rates[r["before"]:r["before"] + 2])
        rounds.append({"trainer": round(trainer, 1), "bare": round(around, 1)})
        rounds[-1]["ratio"] = round(rounds[-1]["trainer"] / rounds[-1]["bare"], 3)
    if not rounds:
        raise RuntimeError("no Trainer chunk could be timed: its reports all fell on epoch ends")
    ratios = [r["ratio"] for r in rounds]
    lo, hi = statistics.quantiles(ratios, n=4)[::2] if len(ratios) >= 2 else (ratios[0], ratios[0])
    return {"kind": "training", "device": device_name(device), "threads": torch.get_num_threads(),
            "noisy": hi > NOISY_SPREAD * lo,
            "batch_size": batch_size, "steps_per_round": statistics.median(r["steps"] for r in records),
            "rounds": rounds,
            "trainer_images_per_sec": statistics.median(r["trainer"] for r in rounds),
            "bare_images_per_sec": statistics.median(r["bare"] for r in rounds),
            "ratio": statistics.median(ratios),
            "ratio_iqr": [round(lo, 3), round(hi, 3)]}    # the middle half of the pairs' ratios


def _preset_case(preset: str, dataset: str, width: float | None, train_size: int | None) -> Case:
    def case(options: BenchOptions) -> dict:
        from lab.datasets import load_dataset
        from presets import load_preset
        ds = load_dataset(dataset, options.data_root, seed=0, train_size=train_size, test_size=256)
        spec = load_preset(preset, input_shape=ds.input_shape, classes=len(ds.classes), width=width)
        return {"model": spec["name"], "dataset": dataset, "width": spec["width"],
                **compare_training(spec, ds, options)}
    return case


register_case("train LeNet-5 on digits", _preset_case("LeNet-5", "digits", None, None))
register_case("train ResNet-18 + CBAM (width 0.25) on shapes",
              _preset_case("ResNet-18 + CBAM", "shapes", 0.25, 2048))


def format_result(result: dict) -> str:
    """One case as a line or two of text."""
    if result.get("kind") == "training":
        lo, hi = result.get("ratio_iqr") or (result["ratio"], result["ratio"])
        spread = f"{len(result['rounds'])} interleaved pairs; middle half {lo:.3f}–{hi:.3f}"
        return (f"{result['name']} [{result['device']}, {result['threads']} thread(s), "
                f"batch {result['batch_size']}]\n"
                f"  Trainer {result['trainer_images_per_sec']:,.0f} img/s | bare loop "
                f"{result['bare_images_per_sec']:,.0f} img/s | ratio {result['ratio']:.3f} "
                f"(medians; {spread})"
                + ("\n  rounds disagree: other work is competing for the CPU; rerun, or try "
                   "--threads 1" if result.get("noisy") else ""))
    fields = ", ".join(f"{k} {v}" for k, v in result.items() if k != "name" and not isinstance(v, (list, dict)))
    return f"{result['name']}: {fields}"


import lab.bench.inspect  # noqa: E402,F401  (registers the inspection cases)
import lab.bench.distributed  # noqa: E402,F401  (registers the torchrun case)
import lab.bench.watch  # noqa: E402,F401  (registers the watching case)
import lab.bench.diagram  # noqa: E402,F401  (registers the network-diagram case)
import lab.bench.pretrained  # noqa: E402,F401  (registers the real-photo cases)
import lab.bench.checkpoint  # noqa: E402,F401  (registers the checkpoint-cost case)
import lab.bench.startup  # noqa: E402,F401  (registers the app start-up case)
import lab.bench.precise_bn  # noqa: E402,F401  (registers the PreciseBN-cost case)
