"""Distributed training under torchrun (issue 7): `torchrun -m lab train` with 2 gloo
processes on the CPU, checked against one process with the same global batch; gradients,
parameters, buffers and stops agree across processes; rank 0 alone prints and writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lab.train import distributed
from lab.datasets import load_dataset
from lab.train.distributed import Distributed, DistributedError
from lab.runs import list_runs, load_run
from lab.train.trainer import Trainer, TrainingError, TrainSettings
import dist_worker
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SMALL_CNN = {"name": "Small CNN", "input": [3, 32, 32], "classes": 10, "layers": [
    {"block": "conv", "params": {"out": 16}},
    {"block": "maxpool"},
    {"block": "conv", "params": {"out": 32}},
    {"block": "maxpool"},
    {"block": "conv", "params": {"out": 64}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}
CPU = Distributed(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"), backend="gloo")
TIMING = ("elapsed_s", "images_per_sec", "eta_s")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def _torchrun(*args: str, launcher: tuple[str, ...] = ("--nproc_per_node=2", "--standalone"),
              env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *launcher, *args],
                          cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=600)


def _worker(tmp_path: Path, mode: str) -> tuple[list[dict], list[list[dict]]]:
    """Run tests/dist_worker.py in `mode` on 2 processes: (tensors, events) per rank."""
    proc = _torchrun(str(ROOT / "tests" / "dist_worker.py"), str(tmp_path), mode)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tensors = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    events = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    return tensors, events


def _untimed(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in events]


# -- the CLI under torchrun, against one process

def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, one_thread):
    spec = tmp_path / "small.json"
    spec.write_text(json.dumps(SMALL_CNN))
    out = tmp_path / "runs"
    proc = _torchrun("-m", "lab", "train", "--spec", str(spec), "--dataset", "shapes",
                     "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--json",
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    # Rank 0 alone prints: one start, one epoch, one end (rank 1's copies would double them).
    assert kinds.count("start") == 1 and kinds.count("epoch") == 1 and kinds[-1] == "end"
    start, end = events[0], events[-1]
    assert start["processes"] == 2 and start["batch_per_process"] == 32
    assert start["steps_per_epoch"] == 8000 // 64 and start["device"] == "cpu"
    assert end["status"] == "completed"

    # Rank 0 alone writes: one run, holding rank 0's network and the global numbers.
    runs = list_runs(out)
    assert runs == [Path(end["run_dir"])]
    assert sorted(p.name for p in out.iterdir()) == [runs[0].name]
    run = load_run(runs[0])
    assert run.settings["batch_size"] == 64 and run.metrics[-1]["test_acc"] == end["test_acc"]

    # The reported accuracy is over the whole test set (both shards, reduced): the saved
    # network, evaluated here in one process, scores the same.
    ds = load_dataset("shapes")
    with torch.no_grad():
        x = ds.normalize(ds.test_x)
        predicted = torch.cat([run.model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    assert (predicted == ds.test_y).sum().item() == round(end["test_acc"] * len(ds.test_y))

    # One process, same global batch, same seed: the same accuracy band.
    single = Trainer(SMALL_CNN, TrainSettings(epochs=1, batch_size=64, device="cpu"), ds)
    alone = list(single.run())[-1]
    assert alone["status"] == "completed"
    assert alone["test_acc"] > 0.75 and end["test_acc"] > 0.75, (alone["test_acc"], end["test_acc"])
    assert abs(alone["test_acc"] - end["test_acc"]) < 0.04, (alone["test_acc"], end["test_acc"])
    assert abs(alone["train_loss"] - end["train_loss"]) < 0.15


def test_two_nodes_meet_through_torchruns_rendezvous(tmp_path):
    """Multi-node flags as in the README, with two 'nodes' on this machine: both join, the
    global rank 0 alone saves, and each node prepares its own copy of the data."""
    port = free_port()
    out = tmp_path / "runs"
    args = ["-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "digits", "--epochs", "1",
            "--batch-size", "32", "--train-size", "256", "--test-size", "64", "--device", "cpu",
            "--out", str(out)]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=convscope-test",
         *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)]
    results = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-4000:]
    printed = [stdout for stdout, _ in results if "run saved to" in stdout]
    assert len(printed) == 1 and "training on 2 processes (CPU)" in printed[0]
    assert len(list_runs(out)) == 1


def test_ctrl_c_to_torchrun_stops_every_process_and_rank_0_saves(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         "-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "digits", "--epochs", "10000",
         "--device", "cpu", "--json", "--out", str(tmp_path)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if json.loads(line)["type"] == "step":
                proc.send_signal(signal.SIGINT)       # what a Ctrl-C in its terminal sends
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err.count("stopping: all processes stop together at the next report") == 1   # rank 0's
    end = json.loads(rest.splitlines()[-1])
    assert end["status"] == "stopped" and 0 < end["epochs"] < 10000 and end["test_acc"] is not None
    assert list_runs(tmp_path) == [Path(end["run_dir"])]
    assert load_run(end["run_dir"]).end["status"] == "stopped"


def test_a_process_that_fails_says_why_once_and_the_others_do_not_add_tracebacks(tmp_path):
    proc = _torchrun("-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "mnist",
                     "--no-download", "--data-root", str(tmp_path / "none"), "--device", "cpu")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "mnist" in errors[0]           # rank 0 (which loads first) says why
    assert all("mnist" in e or "another process of this job failed" in e for e in errors)
    assert "[rank0]: Traceback" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr


# -- what every process ends with

def test_gradients_agree_across_processes_and_equal_one_process_on_the_whole_batch(tmp_path, one_thread):
    (r0, r1), (e0, e1) = _worker(tmp_path, "step")
    assert e0[-1]["status"] == "completed" and e0[0]["total_steps"] == 1
    grads = sorted(k for k in r0 if k.startswith("grad."))
    assert len(grads) == len([k for k in r0 if k.startswith("param.")]) > 0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k       # all-reduced: bit for bit the same
    # Two half batches, gradients averaged by DDP == the whole batch in one process.
    (tmp_path / "single").mkdir()
    dist_worker.run(tmp_path / "single", "step")
    alone = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    for k in grads:
        assert torch.allclose(r0[k], alone[k], rtol=1e-4, atol=1e-6), k
        assert r0[k].abs().sum() > 0, k
    assert e0[-1]["train_loss"] == pytest.approx(json.loads(
        (tmp_path / "single" / "rank0.json").read_text())[-1]["train_loss"], rel=1e-5)


def test_an_epoch_with_augmentation_leaves_every_process_with_the_same_network(tmp_path, one_thread):
    (r0, r1), (e0, e1) = _worker(tmp_path, "epoch")
    assert e0[-1]["status"] == "completed"
    for k in r0:                                   # parameters, gradients and BN statistics
        assert torch.equal(r0[k], r1[k]), k
    assert any(k.endswith("running_mean") for k in r0)
    assert _untimed(e0) == _untimed(e1)            # every process saw the same numbers
    epoch = next(e for e in e0 if e["type"] == "epoch")
    assert 0 < epoch["train_acc"] <= 1 and epoch["test_acc"] is not None


def test_streamed_batches_shard_like_device_batches(tmp_path, one_thread):
    """The DataLoader path (a data set too big for the device) deals the same shards."""
    (tmp_path / "device").mkdir()
    (tmp_path / "streamed").mkdir()
    (d0, _), (de, _) = _worker(tmp_path / "device", "epoch")
    (s0, s1), (se, _) = _worker(tmp_path / "streamed", "epoch-streamed")
    assert de[0]["data_on_device"] and not se[0]["data_on_device"]
    for k in d0:
        assert torch.equal(d0[k], s0[k]) and torch.equal(s0[k], s1[k]), k


def test_a_stop_asked_of_one_process_stops_all_at_the_same_step(tmp_path, one_thread):
    (r0, r1), (e0, e1) = _worker(tmp_path, "stop")
    end0, end1 = e0[-1], e1[-1]
    assert end0["status"] == end1["status"] == "stopped"
    assert end0["epochs"] == end1["epochs"] < 1     # within the first of two epochs
    assert end0["test_acc"] == end1["test_acc"] is not None
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


def test_reports_are_spaced_by_time_yet_reached_by_all_at_the_same_steps(tmp_path, one_thread):
    _, (e0, e1) = _worker(tmp_path, "every-step")
    steps = [e["step"] for e in e0 if e["type"] == "step"]
    assert steps == list(range(1, 17))                 # interval 0: a report after every step
    assert [e["step"] for e in e1 if e["type"] == "step"] == steps
    assert _untimed(e0) == _untimed(e1)


# -- when something goes wrong: one message, from the process that knows

def test_errors_every_process_meets_are_said_once(tmp_path):
    proc = _torchrun("-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "digits",
                     "--train-size", "64", "--test-size", "8", "--batch-size", "64",
                     "--device", "cpu", "--out", str(tmp_path / "runs"),
                     launcher=("--nproc_per_node=3", "--standalone"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0
    assert errors == ["error: batch size 64 cannot be split evenly over 3 processes; "
                      "use a multiple of 3"]
    proc = _torchrun("-m", "lab", "train", "--preset", "LeNet-5", "--epochs", "two")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: argument --epochs: invalid int value: 'two'"]


def test_a_diverged_run_ends_together_and_rank_0_saves_it(tmp_path):
    proc = _torchrun("-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "digits",
                     "--train-size", "256", "--test-size", "64", "--batch-size", "32",
                     "--lr", "1e6", "--optimizer", "sgd", "--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: loss became"), errors
    assert "diverged: test accuracy" in proc.stdout
    [run] = list_runs(tmp_path)
    assert load_run(run).end["status"] == "diverged"


def test_out_of_memory_in_one_process_is_said_by_that_process(tmp_path):
    """A GPU can run out of memory in one process alone; here rank 1's third report raises
    the error CUDA would (injected through sitecustomize: a CPU cannot be made to)."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import lab.train.trainer as t\n"
        "    real, calls = t.Trainer._reduce_report, []\n"
        "    def failing(self, *args):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 3:\n"
        "            raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
        "        return real(self, *args)\n"
        "    t.Trainer._reduce_report = failing\n")
    env = _env()
    env["PYTHONPATH"] = f"{inject}{os.pathsep}{ROOT}"
    proc = _torchrun("-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "digits",
                     "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "runs"), env=env)
    said = proc.stderr[-4000:]                  # in the failure message, should one happen
    assert proc.returncode != 0, said
    assert "error: process 1: ran out of memory at batch size 64" in proc.stderr, said
    assert "[rank0]: Traceback" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr, said
    # No finished run is saved; a checkpoint written before the failure (on a fast machine
    # epoch 1 ends first) stays, for `--resume`.
    for run in list_runs(tmp_path / "runs"):
        assert load_run(run).end is None and (run / "checkpoint.json").exists()


def test_a_save_that_fails_in_rank_0_leaves_the_others_quiet(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = _torchrun("-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "digits",
                     "--train-size", "128", "--test-size", "16", "--epochs", "1",
                     "--device", "cpu", "--out", str(blocker / "runs"))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "Not a directory" in errors[0]
    assert all("Not a directory" in e or "another process of this job failed" in e for e in errors)
    assert "[rank1]: Traceback" not in proc.stderr


# -- refusals, each one clear line

def _shapes():
    return load_dataset("shapes", train_size=64, test_size=16)


def test_a_global_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(TrainingError, match="batch size 63 cannot be split evenly over 2 processes"):
        Trainer(SMALL_CNN, TrainSettings(batch_size=63, device="cpu"), _shapes(), dist=CPU)


def test_sync_bn_on_cpus_is_refused_with_the_reason():
    with pytest.raises(TrainingError, match="--sync-bn needs GPUs"):
        Trainer(SMALL_CNN, TrainSettings(sync_bn=True, device="cpu"), _shapes(), dist=CPU)


def test_sync_bn_keeps_the_state_dict_and_the_eval_outputs():
    from blocks import build
    model = build(dict(SMALL_CNN)).eval()
    x = torch.randn(4, 3, 32, 32)
    before, keys = model(x), list(model.state_dict())
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and list(model.state_dict()) == keys
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert torch.equal(model(x), before)


def test_setup_is_a_no_op_for_one_process_and_explains_a_half_set_environment(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.setup("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="start distributed runs with torchrun"):
        distributed.setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedError, match="WORLD_SIZE must be a whole number"):
        distributed.setup("cpu")


def test_the_cli_explains_a_broken_torchrun_environment_in_one_line(monkeypatch, capsys):
    from lab.cli import main
    monkeypatch.setenv("WORLD_SIZE", "x")
    assert main(["train", "--preset", "LeNet-5", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "error: WORLD_SIZE must be a whole number, got 'x'\n"


def test_devices_torchrun_cannot_use_are_refused(monkeypatch):
    with pytest.raises(DistributedError, match="not on Apple MPS"):
        distributed._device_for("mps", 0)
    assert distributed._device_for("auto", 1).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DistributedError, match="no CUDA GPU"):
            distributed._device_for("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DistributedError, match="use --device cuda, not cuda:1"):
        distributed._device_for("cuda:1", 0)
    with pytest.raises(DistributedError, match="--nproc_per_node=2 or fewer"):
        distributed._device_for("cuda", 3)
    assert distributed._device_for("cuda", 1) == torch.device("cuda", 1)


def test_the_cli_refuses_sync_bn_under_torchrun_on_cpus(tmp_path):
    proc = _torchrun("-m", "lab", "train", "--preset", "LeNet-5", "--dataset", "digits",
                     "--train-size", "64", "--test-size", "16", "--device", "cpu", "--sync-bn",
                     "--out", str(tmp_path / "runs"))
    assert proc.returncode != 0
    assert "error: --sync-bn needs GPUs" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_bench_case_runs_one_process_against_two(monkeypatch):
    from lab.bench import distributed as bench_distributed
    from lab.bench import BenchOptions
    monkeypatch.setattr(bench_distributed, "usable_cpus", lambda: 2)   # 1 thread per process
    result = bench_distributed.distributed_case(BenchOptions(quick=True, device="cpu"))
    assert result["device"] == "cpu" and result["processes"] == 2 and result["train_images"] == 1024
    # Both rates are rounded to 0.1 image/s: under load (one at ~20 image/s) that alone moves
    # their ratio by up to 0.05/one relative.
    one, many = result["one_process_images_per_sec"], result["n_processes_images_per_sec"]
    assert one > 0 and many > 0 and result["speedup"] == pytest.approx(many / one, rel=0.05 / one + 1e-3)
    for key in ("one_process_test_acc", "n_processes_test_acc"):
        assert 0 <= result[key] <= 1
