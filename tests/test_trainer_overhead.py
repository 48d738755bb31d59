"""The Trainer's per-step work beyond a bare PyTorch loop (issue 15, item 13), counted in
tensor operations rather than timed (a shared machine's timings are noise; the bench case
`train LeNet-5 on digits` shows the speed): each step may add only indexing its batch,
keeping its loss and scoring its predictions — no per-step normalisation or reductions."""
from __future__ import annotations

import collections
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lab import bench
from lab.datasets import load_dataset
from lab.train.trainer import Trainer, TrainSettings, prepare_spec

TINY = {"name": "tiny", "layers": [{"block": "conv", "params": {"out": 4, "stride": 2}},
                                   {"block": "global_avg_pool"}, {"block": "linear"}]}


class _Ops(TorchDispatchMode):
    """Counts the aten operations run inside it."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_a_trainer_step_adds_few_cheap_operations_to_a_bare_step():
    ds = load_dataset("digits", train_size=512, test_size=32)
    # PreciseBN off: its pass over the epoch's images would differ between the two runs.
    settings = TrainSettings(epochs=1, batch_size=32, device="cpu", report_interval=1e9, precise_bn=0)

    def trainer_ops(n: int) -> collections.Counter:
        part = dataclasses.replace(ds, train_x=ds.train_x[:n], train_y=ds.train_y[:n])
        trainer = Trainer(TINY, settings, part)
        with _Ops() as counter:
            list(trainer.run())
        return counter.ops

    # One epoch of 16 steps against one of 8: everything per run or per epoch cancels.
    per_step = trainer_ops(512) - trainer_ops(256)
    loop = bench._BareLoop(prepare_spec(TINY, ds.input_shape, 10), ds, settings, torch.device("cpu"))
    loop.steps(2)
    with _Ops() as a:
        loop.steps(8)
    with _Ops() as b:
        loop.steps(16)
    bare = b.ops - a.ops
    extra = per_step - bare
    # oneDNN's convolution allocates and re-dispatches a varying few times: not the loop's work.
    for jitter in ("aten.empty", "aten.convolution"):
        extra.pop(jitter, None)
    # Per step: two slices and two index_selects (the batch), a detach (the loss kept for the
    # report), argmax and eq (the training accuracy, written in place).
    assert sum(extra.values()) <= 7 * 8, extra
    for op in ("aten._to_copy", "aten.sub", "aten.div", "aten.sum", "aten.add"):
        assert extra[op] <= 0, (op, extra)      # no normalisation, no per-step reductions


def test_the_bench_interleaves_trainer_and_bare_chunks(monkeypatch):
    """Every Trainer chunk is measured between two bare-loop chunks."""
    log = []
    steps = bench._BareLoop.steps
    monkeypatch.setattr(bench._BareLoop, "steps", lambda self, n: log.append("bare") or steps(self, n))
    run = Trainer.run

    def logged_run(self):
        for event in run(self):
            log.append(event["type"])
            yield event
    monkeypatch.setattr(Trainer, "run", logged_run)
    ds = load_dataset("digits", train_size=256, test_size=32)
    result = bench.compare_training(TINY, ds, bench.BenchOptions(device="cpu", rounds=3, round_seconds=0.05),
                                    batch_size=16, warmup=1)
    assert len(result["rounds"]) == 3 and result["ratio_iqr"][0] <= result["ratio"] <= result["ratio_iqr"][1]
    timeline = log[log.index("start"):]
    # After the start: step events, each followed by one bare chunk, until the pairs are done.
    assert timeline[1::2][:4] == ["step"] * 4 and timeline[2::2][:4] == ["bare"] * 4
