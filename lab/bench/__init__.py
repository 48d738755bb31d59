"""Speed measured as ratios (`python -m lab bench`).

A case is a named function `fn(options) -> dict`; `register_case` adds one (the
inspection timings and the torchrun case, one process against N, plug in here). The training cases train one model on one batch
stream twice — through `Trainer` with its reporting on, and through a bare PyTorch loop
(zero_grad, forward, loss, backward, step over pre-made, pre-normalised batches already on
the device) — in alternating rounds (A B, B A, A B …) so drift in a shared machine's speed
falls on both sides, and reports both images per second and their ratio (medians over
rounds, so a burst of other work on a shared machine does not decide the figure).
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
# Rounds whose ratios differ by more than this factor mean the machine was busy with other work.
NOISY_SPREAD = 1.15
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


def _bare_round(spec: dict, ds, settings: TrainSettings, device: torch.device,
                warmup: int, steps: int) -> tuple[int, float]:
    """(images, seconds) of `steps` plain training steps after `warmup` untimed ones."""
    torch.manual_seed(settings.seed)
    model = blocks.build(spec, device=device)
    precision = Precision.for_device(device)
    autocast = precision.autocast(device)
    fmt = torch.channels_last if precision.channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    optimizer = make_optimizer(model, settings)
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    criterion = nn.CrossEntropyLoss()
    b = settings.batch_size
    n_batches = min(warmup + steps, 32)
    batches = []
    for i in range(n_batches):
        x = ds.normalize(ds.train_x[i * b:(i + 1) * b].to(device)).contiguous(memory_format=fmt)
        batches.append((x, ds.train_y[i * b:(i + 1) * b].to(device)))

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = criterion(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    for i in range(warmup):
        step(*batches[i % n_batches])
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(*batches[i % n_batches])
    synchronize(device)
    return steps * b, time.perf_counter() - t0


def _trainer_round(spec: dict, ds, settings: TrainSettings, warmup: int) -> tuple[int, float]:
    """(images, seconds) of the Trainer's steps after `warmup`, timed by its step events
    (each is emitted right after a step and its metric read-back). When the steps are so
    slow that no report falls after the warm-up but before the last step, the round is
    timed from the "start" event instead (warm-up included: slightly pessimistic)."""
    trainer = Trainer(spec, settings, ds)
    marks: list[tuple[int, float]] = []
    for event in trainer.run():
        if event["type"] == "start":
            start = (0, time.perf_counter())
        elif event["type"] == "step":
            marks.append((event["step"], time.perf_counter()))
        elif event["type"] == "end" and event["status"] != "completed":
            raise RuntimeError(f"the bench run ended '{event['status']}': {event['message']}")
    timed = [m for m in marks if m[0] >= warmup]
    if len(timed) < 2:
        timed = [start, marks[-1]]
    (s0, t0), (s1, t1) = timed[0], timed[-1]
    return (s1 - s0) * settings.batch_size, t1 - t0


def compare_training(spec: dict, ds, options: BenchOptions, batch_size: int | None = None,
                     warmup: int = 3) -> dict:
    """Trainer vs bare loop on the same model, data and device; alternating rounds.
    The figures are medians over rounds (a shared machine has bursts of other work)."""
    batch_size = batch_size or TrainSettings.batch_size
    device = choose_device(options.device)
    spec = prepare_spec(spec, ds.input_shape, len(ds.classes))
    probe = TrainSettings(device=str(device), batch_size=batch_size, epochs=1, lr=1e-3)
    # Calibrate: how many steps make a round of about `options.seconds`? The first call pays
    # one-off costs (kernel selection, allocator growth), so it is not measured.
    calib = _tiled(ds, 64 * batch_size, 0)
    _bare_round(spec, calib, probe, device, 1, 1)
    n = 2
    while True:
        _, secs = _bare_round(spec, calib, probe, device, warmup, n)
        if secs >= 0.25 or n >= 64:
            break
        n *= 4
    per_step = secs / n
    # A round spans several report intervals, so the Trainer's step events can time it.
    seconds = max(options.seconds, 4 * TrainSettings.report_interval)
    steps = int(min(5000, max(options.min_steps, math.ceil(seconds / max(per_step, 1e-6)))))
    data = _tiled(ds, (warmup + steps) * batch_size, batch_size)
    settings = dataclasses.replace(probe, report_interval=TrainSettings.report_interval)
    # One untimed pass through the Trainer too: its first run in a process pays one-off
    # costs of its own (e.g. the evaluation's batch shape), which would bias round one.
    _trainer_round(spec, _tiled(ds, (warmup + 2) * batch_size, batch_size), settings, warmup)
    rounds = []
    for r in range(options.n_rounds):
        order = ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")
        result = {}
        for which in order:
            if which == "trainer":
                result[which] = _trainer_round(spec, data, settings, warmup)
            else:
                result[which] = _bare_round(spec, data, settings, device, warmup, steps)
        rounds.append({k: round(v[0] / v[1], 1) for k, v in result.items()})
        rounds[-1]["ratio"] = round(rounds[-1]["trainer"] / rounds[-1]["bare"], 3)
    ratios = [r["ratio"] for r in rounds]
    return {"kind": "training", "device": device_name(device), "threads": torch.get_num_threads(),
            "noisy": max(ratios) > NOISY_SPREAD * min(ratios),
            "batch_size": batch_size, "steps_per_round": steps, "rounds": rounds,
            "trainer_images_per_sec": statistics.median(r["trainer"] for r in rounds),
            "bare_images_per_sec": statistics.median(r["bare"] for r in rounds),
            "ratio": statistics.median(r["ratio"] for r in rounds)}


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
        spread = ", ".join(f"{r['ratio']:.3f}" for r in result["rounds"])
        return (f"{result['name']} [{result['device']}, {result['threads']} thread(s), "
                f"batch {result['batch_size']}]\n"
                f"  Trainer {result['trainer_images_per_sec']:,.0f} img/s | bare loop "
                f"{result['bare_images_per_sec']:,.0f} img/s | ratio {result['ratio']:.3f} "
                f"(medians; rounds: {spread})"
                + ("\n  rounds disagree: other work is competing for the CPU; rerun, or try "
                   "--threads 1" if result.get("noisy") else ""))
    fields = ", ".join(f"{k} {v}" for k, v in result.items() if k != "name" and not isinstance(v, (list, dict)))
    return f"{result['name']}: {fields}"


import lab.bench.inspect  # noqa: E402,F401  (registers the inspection cases)
import lab.bench.distributed  # noqa: E402,F401  (registers the torchrun case)
import lab.bench.watch  # noqa: E402,F401  (registers the watching case)
import lab.bench.diagram  # noqa: E402,F401  (registers the network-diagram case)
import lab.bench.pretrained  # noqa: E402,F401  (registers the real-photo cases)
