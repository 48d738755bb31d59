"""Checkpoints and exact resume (issue 14): a run stopped after epoch 2 and resumed equals,
bit for bit, the run that was never stopped — in the Trainer, through `lab train
--stop-after/--resume`, after SIGKILL, and under 2-process torchrun; a full disk keeps the
previous checkpoint; a finished run extended to more epochs follows the new schedule.

"Equal" for the event records: every line equal after dropping the wall-clock fields
(`elapsed_s`, `images_per_sec`, `eta_s`). Step events fall where the clock says (every
`report_interval` seconds), so these runs report every step (`--report-interval 0`),
which makes their number and place exact too.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lab import runs
from lab.cli import main
from lab.datasets import load_dataset
from lab.runs import RunError, RunParts, RunWriter, list_runs, load_checkpoint, load_run
from lab.train.trainer import Trainer, TrainingError, TrainSettings, lr_schedule

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("elapsed_s", "images_per_sec", "eta_s")
# BatchNorm, DropBlock and dropout: every source of randomness a resume must carry over.
NET = {"name": "Resume net", "layers": [
    {"block": "conv", "params": {"out": 8, "kernel": 3}},
    {"block": "dropblock", "params": {"p": 0.2, "block_size": 3}},
    {"block": "conv", "params": {"out": 8, "kernel": 3, "stride": 2}},
    {"block": "dropout", "params": {"p": 0.3}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}
CLI = ["--dataset", "digits", "--train-size", "256", "--test-size", "32", "--batch-size", "16",
       "--device", "cpu", "--augment", "--lr", "0.005", "--report-interval", "0"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every run here on one thread: the subprocesses too (OMP_NUM_THREADS=1), since float
    sums split over another number of threads differ in their last bits."""


def _untimed(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in events]


def _metrics(run_dir: Path) -> list[dict]:
    return _untimed([json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()])


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


# ---------------------------------------------------------------- the Trainer

@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes", train_size=128, test_size=32)


def _settings(**kw) -> TrainSettings:
    return TrainSettings(**{**dict(dataset="shapes", epochs=4, batch_size=32, lr=5e-3, device="cpu",
                                   augment=True, report_interval=0.0), **kw})


def _train_until(trainer: Trainer, writer: RunWriter | None = None) -> None:
    for event in trainer.run():
        if event["type"] == "epoch":
            ck = trainer.checkpoint()
            if writer is not None:
                writer.save(RunParts.from_trainer(trainer), ck)


def test_stopped_and_resumed_trainer_equals_the_uninterrupted_run(shapes, tmp_path):
    whole = Trainer(NET, _settings(), shapes)
    _train_until(whole)

    first = Trainer(NET, _settings(), shapes, stop_after=2)
    with RunWriter(tmp_path, "resume net") as writer:
        _train_until(first, writer)
    assert first.history[-1]["status"] == "stopped" and first.history[-1]["epochs"] == 2
    ck = load_checkpoint(writer.path)          # through the files: safetensors + JSON
    assert (ck.epoch, ck.step) == (2, 8) and ck.events == first.history[:-1]

    resumed = Trainer(NET, _settings(), shapes, resume=ck)
    events = list(resumed.run())
    assert events[0]["type"] == "start" and events[0]["resumed_from"]["epoch"] == 2
    assert events[0]["resumed_from"]["exact"] is True
    assert [e["type"] for e in events[1:]].count("epoch") == 2
    _assert_same_weights(whole.model.state_dict(), resumed.model.state_dict())
    assert _untimed(resumed.history) == _untimed(whole.history)

    # The check can fail: resuming with another dropout/DropBlock generator state, the
    # weights part after one step.
    ck.tensors["rng.global.cpu.0"] = torch.Generator().manual_seed(1).get_state()
    other = Trainer(NET, _settings(), shapes, resume=ck)
    list(other.run())
    assert not torch.equal(other.model.layers[0].conv.weight, whole.model.layers[0].conv.weight)


def test_checkpoints_are_taken_at_epoch_ends_only_and_must_fit(shapes):
    t = Trainer(NET, _settings(epochs=1), shapes)
    with pytest.raises(TrainingError, match="right after an epoch event"):
        t.checkpoint()
    ck = None
    for event in t.run():
        if event["type"] == "step":
            with pytest.raises(TrainingError, match="right after an epoch event"):
                t.checkpoint()
        if event["type"] == "epoch":
            ck = t.checkpoint()
    with pytest.raises(TrainingError, match="already trained 1 of 1 epochs"):
        Trainer(NET, _settings(epochs=1), shapes, resume=ck)
    with pytest.raises(TrainingError, match="steps per epoch"):
        Trainer(NET, _settings(batch_size=16), shapes, resume=ck)


def test_a_finished_run_extended_follows_the_new_totals_schedule(shapes):
    short = Trainer(NET, _settings(epochs=2, schedule="cosine"), shapes)
    ck = None
    for event in short.run():
        if event["type"] == "epoch":
            ck = short.checkpoint()
    longer = _settings(epochs=3, schedule="cosine")
    resumed = Trainer(NET, longer, shapes, resume=ck)
    events = list(resumed.run())
    assert events[0]["resumed_from"] == {"epoch": 2, "step": 8, "planned_epochs": 2, "epochs": 3,
                                         "exact": False}
    lrs = lr_schedule(longer, 12)
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [9, 10, 11, 12]
    assert [e["lr"] for e in steps] == lrs[8:12]
    assert resumed.history[-1]["status"] == "completed" and resumed.history[-1]["epochs"] == 3
    assert [e["epoch"] for e in resumed.history if e["type"] == "epoch"] == [1, 2, 3]


def test_a_full_disk_mid_checkpoint_keeps_the_previous_one(shapes, tmp_path, monkeypatch):
    t = Trainer(NET, _settings(epochs=3), shapes)
    real_save = runs.save_file
    with RunWriter(tmp_path, "full disk") as writer:
        for event in t.run():
            if event["type"] != "epoch":
                continue
            ck = t.checkpoint()
            if event["epoch"] == 2:
                def full(tensors, path, metadata=None):
                    Path(path).write_bytes(b"half a file")
                    raise OSError(errno.ENOSPC, "No space left on device")
                monkeypatch.setattr(runs, "save_file", full)
                with pytest.raises(OSError, match="No space left"):
                    writer.save(RunParts.from_trainer(t), ck)
                monkeypatch.setattr(runs, "save_file", real_save)
                assert load_checkpoint(writer.path).epoch == 1
                assert load_run(writer.path).metrics[-1]["epoch"] == 1
                assert not [p for p in os.listdir(writer.path) if p.startswith(".tmp-")]
                break
            writer.save(RunParts.from_trainer(t), ck)


# ---------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def net_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "net.json"
    path.write_text(json.dumps(NET))
    return path


@pytest.fixture(scope="module")
def uninterrupted(net_file, tmp_path_factory) -> Path:
    """The 4-epoch CLI run that every stopped or killed one must end up equal to."""
    out = tmp_path_factory.mktemp("whole")
    assert main(["train", "--spec", str(net_file), *CLI, "--epochs", "4", "--out", str(out)]) == 0
    return list_runs(out)[0]


def _same_run(a: Path, b: Path) -> None:
    _assert_same_weights(load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors")))
    assert _metrics(a) == _metrics(b)


def test_cli_stop_after_then_resume_equals_the_uninterrupted_run(net_file, uninterrupted, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--spec", str(net_file), *CLI, "--epochs", "4", "--stop-after", "2",
                 "--out", str(out)]) == 0
    run_dir = list_runs(out)[0]
    assert load_run(run_dir).end["status"] == "stopped" and load_checkpoint(run_dir).epoch == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    said = capsys.readouterr().out
    assert f"resuming {run_dir} from its checkpoint at the end of epoch 2 (it stopped at 2 epoch(s))" in said
    assert "completed" in said and list_runs(out) == [run_dir]
    _same_run(run_dir, uninterrupted)
    # A finished run continues only to more epochs; settings other than those stay its own.
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "has completed 4 epoch(s); give --epochs N with N above 4" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--epochs", "5", "--lr", "1"]) == 2
    assert "--lr cannot change" in capsys.readouterr().err


def test_sigkill_mid_epoch_resumes_from_the_last_complete_epoch(net_file, uninterrupted, tmp_path, capsys):
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "lab", "train", "--spec", str(net_file), *CLI,
                             "--epochs", "4", "--json", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:
            event = json.loads(line)
            # A step of epoch 3: epoch 2's checkpoint is on disk, epoch 3 is under way.
            if event["type"] == "step" and event["epoch"] > 2:
                proc.send_signal(signal.SIGKILL)
                break
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    run_dir = list_runs(out)[0]
    epoch = load_checkpoint(run_dir).epoch
    assert epoch in (2, 3)      # 3 only if epoch 3 ended before the signal landed
    assert load_run(run_dir).end is None      # the folder is complete as of that epoch
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    said = capsys.readouterr().out
    assert (f"from its checkpoint at the end of epoch {epoch} (it ended without an end record: "
            f"killed or crashed)") in said
    _same_run(run_dir, uninterrupted)
    assert not [p for p in os.listdir(run_dir) if p.startswith(".tmp-")]


# ---------------------------------------------------------------- torchrun

def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", "-m", "lab", "train", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_stop_and_resume_equals_the_uninterrupted_torchrun(net_file, tmp_path):
    small = [a if a != "256" else "128" for a in CLI]
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    proc = _torchrun("--spec", str(net_file), *small, "--epochs", "3", "--out", str(whole))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _torchrun("--spec", str(net_file), *small, "--epochs", "3", "--stop-after", "1",
                     "--out", str(parted))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = list_runs(parted)[0]
    ck = load_checkpoint(run_dir)
    # Each process's own dropout generator is in the checkpoint, and they differ.
    assert ck.meta["processes"] == 2
    assert not torch.equal(ck.tensors["rng.global.cpu.0"], ck.tensors["rng.global.cpu.1"])
    proc = _torchrun("--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from its checkpoint at the end of epoch 1" in proc.stdout
    _same_run(run_dir, list_runs(whole)[0])


def test_a_run_being_trained_cannot_be_resumed_twice(tmp_path, shapes):
    t = Trainer(NET, _settings(epochs=2), shapes)
    with RunWriter(tmp_path, "locked") as writer:
        _train_until(t, writer)
        with pytest.raises(RunError, match="being written by another process"):
            RunWriter.resume(writer.path)
    RunWriter.resume(writer.path).close()       # free again once the writer is closed


def test_cli_a_full_disk_at_a_checkpoint_is_one_warning_and_training_goes_on(net_file, tmp_path,
                                                                           capsys, monkeypatch):
    real_save = runs.save_file

    def full_at_epoch_2(tensors, path, metadata=None):
        if "checkpoint-" in str(path) and (metadata or {}).get("token") and \
                int(str(path).split("checkpoint-")[1][:8]) == 32:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)
    monkeypatch.setattr(runs, "save_file", full_at_epoch_2)
    out = tmp_path / "runs"
    assert main(["train", "--spec", str(net_file), *CLI, "--epochs", "3", "--stop-after", "2",
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    warnings = [line for line in said.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "after epoch 2" in warnings[0] and "previous checkpoint is kept" in warnings[0]
    run_dir = list_runs(out)[0]
    assert load_checkpoint(run_dir).epoch == 1 and load_run(run_dir).end["status"] == "stopped"
