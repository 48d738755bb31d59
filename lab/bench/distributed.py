"""Bench case for distributed training (`python -m lab bench --case "train on N processes …"`):
the same run — ResNet-18 + CBAM (width 0.25) on `shapes`, one epoch, global batch 64 — as
one process and as `torchrun --nproc_per_node=N -m lab train`, each in fresh processes.

N is the number of GPUs when the device is CUDA and there are at least two, else 2 gloo
processes on the CPU. On the CPU the cores are shared out: one process gets them all, each
of N processes gets cores / N threads, so the figure compares ways of using one machine.
Throughput is the run's own "images_per_sec" (training steps only, all processes' images),
the median over 3 alternating rounds (1 with --quick).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lab.bench import BenchOptions, register_case
from lab.train.device import usable_cpus

ROOT = Path(__file__).resolve().parents[2]
PRESET, DATASET, WIDTH, BATCH = "ResNet-18 + CBAM", "shapes", 0.25, 64


def _train(processes: int, device: str, threads: int, train_size: int, out: Path) -> dict:
    """The "end" event of one `lab train --json` run on `processes` processes."""
    args = ["-m", "lab", "train", "--preset", PRESET, "--dataset", DATASET, "--width", str(WIDTH),
            "--epochs", "1", "--batch-size", str(BATCH), "--train-size", str(train_size),
            "--test-size", "512", "--device", device, "--json", "--out", str(out)]
    if processes > 1:
        args = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the {processes}-process bench run failed: "
                           f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
    return json.loads(proc.stdout.splitlines()[-1])


def distributed_case(options: BenchOptions) -> dict:
    gpus = torch.cuda.device_count() if options.device in ("auto", "cuda") else 0
    device, n = ("cuda", gpus) if gpus >= 2 else ("cpu", 2)
    cores = usable_cpus()
    train_size = 1024 if options.quick else 4096
    rounds = 1 if options.quick else 3
    ones, manys = [], []
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp:
        for r in range(rounds):       # alternating order: drift in a shared machine falls on both
            for processes in ((1, n) if r % 2 == 0 else (n, 1)):
                end = _train(processes, device, max(1, cores // processes), train_size, Path(tmp))
                (ones if processes == 1 else manys).append(end)
    one = statistics.median(e["images_per_sec"] for e in ones)
    many = statistics.median(e["images_per_sec"] for e in manys)
    return {"model": PRESET, "width": WIDTH, "dataset": DATASET, "train_images": train_size,
            "global_batch": BATCH, "device": device, "processes": n, "cores": cores,
            "rounds": rounds, "one_process_images_per_sec": round(one, 1),
            "n_processes_images_per_sec": round(many, 1), "speedup": round(many / one, 3),
            "round_speedups": [round(b["images_per_sec"] / a["images_per_sec"], 3)
                               for a, b in zip(ones, manys)],
            "one_process_test_acc": ones[0]["test_acc"], "n_processes_test_acc": manys[0]["test_acc"]}


register_case("train on N processes (torchrun) vs one", distributed_case)
