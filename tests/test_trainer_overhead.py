"""The Trainer's per-step work beyond a bare PyTorch loop (issue 15, item 13), counted in
tensor operations rather than timed (a shared machine's timings are noise; the bench case
`train LeNet-5 on digits` shows the speed): each step may add only taking its batch (a view)
and keeping its loss and outputs — no per-step gathering, scoring, normalisation or reductions."""
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
    # Per step: two detaches (the loss kept for the report, the outputs kept for the accuracy,
    # scored in one batch every SCORE_EVERY steps). The batch is a view from one split of a
    # block gathered per GATHER_BYTES (both runs here are one block). 8 ops before (two slices,
    # two index_selects, detach, slice, argmax, eq).
    assert sum(extra.values()) <= 2 * 8, extra
    for op in ("aten._to_copy", "aten.sub", "aten.div", "aten.sum", "aten.add",
               "aten.index_select", "aten.argmax", "aten.eq"):
        assert extra[op] <= 0, (op, extra)      # no normalisation, gathering, scoring or reductions per step


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


def test_block_gathering_and_batched_scoring_change_no_number(monkeypatch):
    """Blocks of one batch and scoring every step (the old per-step work) against one block
    and one scoring per epoch: the same losses, accuracies and weights, bit for bit."""
    from lab.train import trainer as trainer_module
    ds = load_dataset("digits", train_size=200, test_size=32)     # 200: a last, short batch
    settings = TrainSettings(epochs=2, batch_size=32, device="cpu", report_interval=0, precise_bn=0)

    def run(gather_bytes: int, score_every: int):
        monkeypatch.setattr(trainer_module, "GATHER_BYTES", gather_bytes)
        monkeypatch.setattr(trainer_module, "SCORE_EVERY", score_every)
        trainer = Trainer(TINY, settings, ds)
        events = [{k: v for k, v in e.items() if k not in ("images_per_sec", "elapsed_s", "eta_s")}
                  for e in trainer.run()]
        return events, trainer.model.state_dict()

    fine, fine_weights = run(1, 1)
    coarse, coarse_weights = run(10**9, 10**6)
    assert [e["type"] for e in fine].count("epoch") == 2
    assert fine == coarse
    assert all(torch.equal(fine_weights[k], coarse_weights[k]) for k in fine_weights)
    accs = [e["train_acc"] for e in fine if e["type"] == "epoch"]
    assert all(0 < a <= 1 for a in accs), accs
