"""Watch a view while a network trains, from outside the training loop.

The trainer yields events and waits while its consumer handles each one, so a consumer can
look at the model between two batches without a hook in the loop. `Watcher.on_event` does,
on a copy of the current weights: at every "epoch" event it records a snapshot (the view is
computed by a callable the caller passes — lab/ never draws; the CLI and the app hand it
visual.watch_snapshot), and, when `during_epoch` is set, also at "step" events, at most every
`min_interval` seconds and never more often than keeps the snapshots' time under `max_share`
of the training time (a snapshot that took c seconds waits c / max_share before the next).

A snapshot is a run event {"type": "watch", "epoch", "step", "index", "seconds", **view}; the
caller appends it to the trainer's history, so it is saved in the run's metrics.jsonl.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch.nn as nn

Compute = Callable[[nn.Module], dict]


class Watcher:
    def __init__(self, compute: Compute, index: int = 0, min_interval: float = 3.0,
                 max_share: float = 0.05, during_epoch: bool = False):
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self.compute, self.index = compute, index
        self.min_interval, self.max_share, self.during_epoch = min_interval, max_share, during_epoch
        self.snapshots: list[dict] = []
        self.seconds = 0.0               # spent computing snapshots
        self._last = time.perf_counter()
        self._wait = min_interval

    def on_event(self, event: dict, trainer: Any) -> dict | None:
        """The snapshot event this training event calls for, or None."""
        kind = event.get("type")
        if kind == "epoch":
            return self._snap(trainer.model, float(event["epoch"]), event)
        if kind == "step" and self.during_epoch and time.perf_counter() - self._last >= self._wait \
                and float(event["epoch"]) != int(event["epoch"]):   # an epoch's last step: its end follows
            return self._snap(trainer.model, float(event["epoch"]), event)
        return None

    def _snap(self, model: nn.Module, epoch: float, event: dict) -> dict:
        t0 = time.perf_counter()
        twin = copy.deepcopy(model).eval()     # the weights as they are now; training goes on
        view = self.compute(twin)
        cost = time.perf_counter() - t0
        self.seconds += cost
        self._last = time.perf_counter()
        self._wait = max(self.min_interval, cost / self.max_share)
        snap = {"type": "watch", "epoch": round(epoch, 4), "step": event.get("step"),
                "index": self.index, "seconds": round(cost, 4), **view}
        self.snapshots.append(snap)
        return snap


def watch_events(events: list[dict]) -> list[dict]:
    """The watch snapshots of a run's events, in order."""
    return [e for e in events if e.get("type") == "watch"]
