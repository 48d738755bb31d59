"""The training engine: events, stop, divergence, failures, reproducibility, data paths,
and (slow) the accuracy bars of the two reference networks."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from lab.datasets import load_dataset
from lab.runs import load_run, save_run
from lab.train.trainer import (TrainSettings, Trainer, TrainingError, augment_batch, lr_schedule,
                         make_normalizer, prepare_spec)
from presets import load_preset

TINY = {
    "name": "tiny",
    "layers": [
        {"block": "conv", "params": {"out": 8, "kernel": 3, "stride": 2}},
        {"block": "conv", "params": {"out": 16, "kernel": 3, "stride": 2}},
        {"block": "global_avg_pool"},
        {"block": "linear"},
    ],
}


@pytest.fixture(scope="module")
def digits():
    """256 training and 64 test images of the real digits set."""
    return load_dataset("digits", train_size=256, test_size=64)


def _settings(**kw) -> TrainSettings:
    base = dict(dataset="digits", epochs=2, batch_size=32, lr=5e-3, device="cpu")
    return TrainSettings(**{**base, **kw})


def _epoch_metrics(events: list[dict]) -> list[tuple]:
    return [(e["train_loss"], e["train_acc"], e["test_loss"], e["test_acc"])
            for e in events if e["type"] == "epoch"]


# ---------------------------------------------------------------- settings and pieces

@pytest.mark.parametrize("field,value,words", [
    ("epochs", 0, "epochs"), ("epochs", 1.5, "epochs"), ("batch_size", 0, "batch size"),
    ("lr", 0, "learning rate"), ("lr", -1e-3, "learning rate"), ("lr", float("nan"), "learning rate"),
    ("optimizer", "rmsprop", "optimizer"), ("schedule", "step", "schedule"),
    ("momentum", 1.0, "momentum"), ("weight_decay", -1, "weight decay"),
    ("label_smoothing", 1.0, "label smoothing"), ("device", "tpu", "device"),
    ("seed", -1, "seed"), ("width", 0, "width"), ("report_interval", -1, "report interval"),
    ("augment", "yes", "augment"),
])
def test_bad_settings_raise_one_line(field, value, words):
    with pytest.raises(ValueError, match=words) as info:
        TrainSettings(**{field: value})
    assert "\n" not in str(info.value)


def test_settings_round_trip_through_json():
    s = TrainSettings(lr=0.1, optimizer="sgd", width=0.5, augment=True)
    again = TrainSettings.from_dict({**json.loads(json.dumps(s.to_dict())), "future_key": 1})
    assert again == s


def test_lr_schedules():
    s = TrainSettings(lr=0.1, schedule="onecycle")
    lrs = lr_schedule(s, 100)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=0.02)
    assert lrs.index(max(lrs)) in (24, 25)
    assert lrs[-1] < 0.1 * 1e-2
    assert all(a <= b for a, b in zip(lrs[:25], lrs[1:25]))
    assert all(a >= b for a, b in zip(lrs[25:], lrs[26:]))
    cos = lr_schedule(dataclasses.replace(s, schedule="cosine"), 10)
    assert cos[0] == pytest.approx(0.1) and cos[5] == pytest.approx(0.05)
    assert lr_schedule(dataclasses.replace(s, schedule="constant"), 3) == [0.1] * 3


def test_augment_batch_flips_and_shifts_exactly():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    none = augment_batch(x, torch.tensor([False, False]), torch.zeros(2, 2, dtype=torch.long), 1)
    assert torch.equal(none, x)
    flipped = augment_batch(x, torch.tensor([True, False]), torch.zeros(2, 2, dtype=torch.long), 1)
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
    # Shift image 0 down by one row (new top row is padding) and image 1 left by one column.
    shifted = augment_batch(x, torch.tensor([False, False]), torch.tensor([[-1, 0], [0, 1]]), 1)
    assert torch.equal(shifted[0, 0, 0], torch.zeros(4))
    assert torch.equal(shifted[0, 0, 1:], x[0, 0, :3])
    assert torch.equal(shifted[1, 0, :, :3], x[1, 0, :, 1:])
    assert torch.equal(shifted[1, 0, :, 3], torch.zeros(4))


def test_device_normalizer_matches_the_data_set(digits):
    x = digits.train_x[:16]
    assert torch.equal(make_normalizer(digits, torch.device("cpu"))(x), digits.normalize(x))


def test_spec_follows_data_set_and_width_override(digits):
    spec = prepare_spec(TINY, digits.input_shape, len(digits.classes), width=0.5)
    assert spec["input"] == [1, 28, 28] and spec["classes"] == 10 and spec["width"] == 0.5
    assert "input" not in TINY                      # the caller's spec is left alone
    trainer = Trainer(TINY, _settings(width=0.5), digits)
    assert trainer.model.spec["width"] == 0.5
    full = Trainer(TINY, _settings(), digits)
    assert full.model.spec["width"] == 1.0
    count = lambda t: sum(p.numel() for p in t.model.parameters())  # noqa: E731
    assert count(trainer) < count(full)
    assert trainer.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------- events

def test_event_stream_shape_and_json(digits):
    trainer = Trainer(TINY, _settings(epochs=3, report_interval=1e9), digits)
    events = list(trainer.run())
    assert events == trainer.history
    kinds = [e["type"] for e in events]
    # A huge interval still reports once per epoch (at its last step).
    assert kinds == ["start"] + ["step", "epoch"] * 3 + ["end"]
    start, end = events[0], events[-1]
    assert start["device"] == "cpu" and start["device_name"] == "CPU"
    assert start["steps_per_epoch"] == 256 // 32 and start["total_steps"] == 24
    assert start["train_size"] == 256 and start["test_size"] == 64
    assert start["classes"] == [str(i) for i in range(10)]
    assert start["params"] == sum(p.numel() for p in trainer.model.parameters()) > 0
    assert start["flops"] > 0
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [8, 16, 24]
    assert [e["epoch"] for e in steps] == [1.0, 2.0, 3.0]
    assert steps[-1]["progress"] == 1.0 and steps[-1]["eta_s"] == 0
    assert all(math.isfinite(e["loss"]) and e["images_per_sec"] > 0 for e in steps)
    epochs = [e for e in events if e["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for e in epochs:
        assert 0 <= e["train_acc"] <= 1 and 0 <= e["test_acc"] <= 1
        assert e["test_acc"] * 64 == pytest.approx(round(e["test_acc"] * 64))
        assert e["train_acc"] * 256 == pytest.approx(round(e["train_acc"] * 256))
    assert end["status"] == "completed" and end["epochs"] == 3
    assert end["test_acc"] == epochs[-1]["test_acc"]
    assert end["best_test_acc"] == max(e["test_acc"] for e in epochs)
    assert end["train_loss"] == steps[-1]["loss"]
    json.dumps(events, allow_nan=False)


def test_interval_zero_reports_every_step(digits):
    trainer = Trainer(TINY, _settings(epochs=1, report_interval=0), digits)
    steps = [e for e in trainer.run() if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 9))
    # Each step event's loss is that one step's loss; the epoch's loss is their mean.
    epoch = next(e for e in trainer.history if e["type"] == "epoch")
    assert epoch["train_loss"] == pytest.approx(sum(e["loss"] for e in steps) / 8)


def test_test_accuracy_matches_an_independent_evaluation(digits):
    trainer = Trainer(TINY, _settings(epochs=1), digits)
    end = list(trainer.run())[-1]
    model = trainer.model.eval()
    with torch.no_grad():
        pred = model(digits.normalize(digits.test_x)).argmax(1)
    assert end["test_acc"] == (pred == digits.test_y).float().mean().item()


# ---------------------------------------------------------------- stop, divergence, failure

def test_stop_after_second_step_keeps_the_trained_model(digits, tmp_path):
    trainer = Trainer(TINY, _settings(epochs=3, report_interval=0), digits)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = 0
    for event in trainer.run():
        if event["type"] == "step":
            seen += 1
            if seen == 2:
                trainer.stop()
    end = trainer.history[-1]
    assert [e["type"] for e in trainer.history] == ["start", "step", "step", "eval", "end"]
    assert end["status"] == "stopped" and end["epochs"] == pytest.approx(2 / 8)
    assert "2 of 24 steps" in end["message"]
    assert 0 <= end["test_acc"] <= 1 and end["best_test_acc"] == end["test_acc"]
    # The final evaluation is an event: the same numbers as the end event, at its epoch.
    final = trainer.history[-2]
    assert final["step"] == 2 and final["epoch"] == end["epochs"]
    assert final["test_acc"] == end["test_acc"] and math.isfinite(final["test_loss"])
    assert 0 <= final["train_acc"] <= 1 and math.isfinite(final["train_loss"])
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, initial[k])]
    assert any(k.endswith("weight") for k in changed)

    run = load_run(save_run(trainer, tmp_path))
    assert run.end["status"] == "stopped"
    x = digits.normalize(digits.test_x[:8])
    with torch.no_grad():
        assert torch.equal(run.model(x), trainer.model.eval()(x))


def test_stop_between_reports_keeps_the_unreported_losses(digits):
    trainer = Trainer(TINY, _settings(report_interval=1e9), digits)
    forward, calls = trainer.model.forward, 0

    def forward_then_stop(x):
        nonlocal calls
        calls += 1
        if calls == 3:
            trainer.stop()          # from "another thread": takes effect before batch 4
        return forward(x)

    trainer.model.forward = forward_then_stop
    events = list(trainer.run())
    assert [e["type"] for e in events] == ["start", "eval", "end"]
    end = events[-1]
    assert end["status"] == "stopped" and end["epochs"] == pytest.approx(3 / 8)
    assert math.isfinite(end["train_loss"]) and end["images_per_sec"] > 0
    assert events[1]["step"] == 3 and events[1]["train_loss"] == pytest.approx(end["train_loss"])
    # Three training batches, PreciseBN's pass over the epoch's 8 batches, one test batch of 2 × 32.
    assert calls == 3 + 8 + 1


def test_stop_before_run_trains_nothing(digits):
    trainer = Trainer(TINY, _settings(), digits)
    trainer.stop()
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    events = list(trainer.run())
    assert [e["type"] for e in events] == ["start", "eval", "end"]
    assert events[-1]["status"] == "stopped" and events[-1]["epochs"] == 0
    assert events[1]["epoch"] == 0 and events[1]["train_loss"] is None
    assert events[1]["test_acc"] == events[-1]["test_acc"]
    # Nothing trained: not even the BatchNorm statistics were recomputed.
    assert all(torch.equal(v, initial[k]) for k, v in trainer.model.state_dict().items())


def test_huge_learning_rate_diverges_and_names_the_step(digits):
    trainer = Trainer(TINY, _settings(optimizer="sgd", lr=1e6, epochs=3, report_interval=0), digits)
    events = list(trainer.run())
    end = events[-1]
    assert end["status"] == "diverged"
    last_ok = max((e["step"] for e in events if e["type"] == "step"), default=0)
    assert f"at step {last_ok + 1} " in end["message"]
    assert "try a lower learning rate than 1e+06" in end["message"]
    assert end["train_loss"] is None and end["test_acc"] is None
    json.dumps(events, allow_nan=False)


def test_out_of_memory_ends_the_run_as_failed(digits):
    trainer = Trainer(TINY, _settings(report_interval=0), digits)
    forward = trainer.model.forward
    calls = 0

    def failing_forward(x):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 1099511627776 bytes.")
        return forward(x)

    trainer.model.forward = failing_forward
    events = list(trainer.run())                     # does not raise
    end = events[-1]
    assert end["status"] == "failed"
    assert "batch size 32" in end["message"] and "smaller batch size or width" in end["message"]
    assert end["epochs"] == pytest.approx(2 / 8)


def test_other_errors_are_not_swallowed(digits):
    trainer = Trainer(TINY, _settings(), digits)

    def broken(_x):
        raise RuntimeError("a bug")

    trainer.model.forward = broken
    with pytest.raises(RuntimeError, match="a bug"):
        list(trainer.run())


def test_a_trainer_runs_once(digits):
    trainer = Trainer(TINY, _settings(epochs=1), digits)
    list(trainer.run())
    with pytest.raises(TrainingError, match="already run"):
        list(trainer.run())


def test_global_torch_state_is_restored(digits):
    threads, bench = torch.get_num_threads(), torch.backends.cudnn.benchmark
    list(Trainer(TINY, _settings(epochs=1), digits).run())
    assert torch.get_num_threads() == threads and torch.backends.cudnn.benchmark == bench


def test_the_mixed_precision_path_trains(digits, monkeypatch):
    """The CUDA recipe (autocast, GradScaler, channels_last), exercised with CPU bf16."""
    from lab.train import trainer as trainer_module
    monkeypatch.setattr(trainer_module.Precision, "for_device",
                        classmethod(lambda cls, device: cls(torch.bfloat16, True, True)))
    trainer = Trainer(TINY, _settings(epochs=2, augment=True), digits)
    events = list(trainer.run())
    assert events[-1]["status"] == "completed"
    assert all(math.isfinite(e["train_loss"]) and 0 <= e["test_acc"] <= 1
               for e in events if e["type"] == "epoch")
    conv = trainer.model.layers[0].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- reproducibility and data paths

def test_same_seed_same_metrics_other_seed_other_metrics(digits):
    runs = [_epoch_metrics(list(Trainer(TINY, _settings(seed=s, augment=True), digits).run()))
            for s in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_dataloader_path_gives_the_same_training(digits):
    # With dropout: the DataLoader must not draw from the global generator dropout uses.
    spec = {**TINY, "layers": TINY["layers"][:-1] + [{"block": "dropout", "params": {"p": 0.2}},
                                                      TINY["layers"][-1]]}
    on_device = Trainer(spec, _settings(augment=True), digits)
    streamed = Trainer(spec, _settings(augment=True), digits, max_device_bytes=1000)
    assert on_device.data_on_device() and not streamed.data_on_device()
    a, b = list(on_device.run()), list(streamed.run())
    assert a[0]["data_on_device"] is True and b[0]["data_on_device"] is False
    assert b[-1]["status"] == "completed"
    assert _epoch_metrics(a) == _epoch_metrics(b)
    for (k, p), q in zip(on_device.model.state_dict().items(), streamed.model.state_dict().values()):
        assert torch.equal(p, q), k


def test_a_set_smaller_than_a_batch_trains_on_one_batch():
    small = load_dataset("digits", train_size=20, test_size=10)
    trainer = Trainer(TINY, _settings(batch_size=64), small)
    events = list(trainer.run())
    assert events[0]["steps_per_epoch"] == 1 and events[-1]["status"] == "completed"
    assert events[1]["images_per_sec"] > 0


# ---------------------------------------------------------------- accuracy bars (slow)

@pytest.mark.slow
def test_lenet5_reaches_95_percent_on_digits_in_10_epochs():
    ds = load_dataset("digits")
    spec = load_preset("LeNet-5", input_shape=ds.input_shape, classes=len(ds.classes))
    trainer = Trainer(spec, TrainSettings(dataset="digits", epochs=10, device="cpu"), ds)
    end = list(trainer.run())[-1]
    assert end["status"] == "completed"
    assert end["test_acc"] >= 0.95, end


@pytest.mark.slow
def test_resnet18_cbam_quarter_width_reaches_90_percent_on_shapes_in_5_epochs():
    ds = load_dataset("shapes")
    spec = load_preset("ResNet-18 + CBAM", input_shape=ds.input_shape, classes=len(ds.classes), width=0.25)
    trainer = Trainer(spec, TrainSettings(dataset="shapes", epochs=5, device="cpu"), ds)
    end = list(trainer.run())[-1]
    assert end["status"] == "completed"
    assert end["test_acc"] >= 0.90, end
