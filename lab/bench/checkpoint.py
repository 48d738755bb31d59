"""Bench case: what a checkpoint at every epoch's end costs (goal: under 2% of the epoch).

ResNet-18 + CBAM (width 0.25) on `shapes`, trained as `lab train` trains it: after each
"epoch" event the trainer's state is captured (`Trainer.checkpoint()`) and the run folder
is written (`RunWriter.save`: the checkpoint's safetensors, checkpoint.json, weights and
metrics, each to a temporary name, fsynced and renamed). Both are timed directly, in the
same process as the epoch they follow, so the share is steady on a busy machine.
Reported per epoch: the epoch's wall time (training and evaluation), the capture and the
write, the checkpoint's size, and the median share over the epochs.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from lab.bench import BenchOptions, register_case

PRESET = "ResNet-18 + CBAM"
WIDTH = 0.25


def checkpoint_cost(options: BenchOptions) -> dict:
    from lab.datasets import load_dataset
    from lab.runs import RunParts, RunWriter
    from lab.train.trainer import Trainer, TrainSettings
    from presets import load_preset
    n_train = 1024 if options.quick else None       # None: all of shapes' training images
    epochs = 2
    ds = load_dataset("shapes", options.data_root, seed=0, train_size=n_train, test_size=512)
    spec = load_preset(PRESET, input_shape=ds.input_shape, classes=len(ds.classes), width=WIDTH)
    settings = TrainSettings(dataset="shapes", epochs=epochs, batch_size=64, device=options.device)
    trainer = Trainer(spec, settings, ds)
    n_train = len(ds.train_y)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp, \
            RunWriter(tmp, spec["name"]) as writer:
        t_epoch = time.perf_counter()
        for event in trainer.run():
            if event["type"] != "epoch":
                continue
            epoch_s = time.perf_counter() - t_epoch
            t0 = time.perf_counter()
            ck = trainer.checkpoint()
            t1 = time.perf_counter()
            path = writer.save(RunParts.from_trainer(trainer), ck)
            t2 = time.perf_counter()
            size = sum(p.stat().st_size for p in Path(path).iterdir() if p.name.startswith("checkpoint"))
            rows.append({"epoch_s": round(epoch_s, 3), "capture_ms": round(1000 * (t1 - t0), 1),
                         "write_ms": round(1000 * (t2 - t1), 1), "share": (t2 - t0) / epoch_s})
            t_epoch = time.perf_counter()
    share = statistics.median(r["share"] for r in rows)
    return {"kind": "checkpoint", "model": f"{PRESET} (width {WIDTH})", "device": str(trainer.device),
            "train_images": n_train, "epochs": epochs,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "checkpoint_mb": round(size / 2**20, 2),
            "epoch_s": round(statistics.median(r["epoch_s"] for r in rows), 3),
            "checkpoint_ms": round(statistics.median(r["capture_ms"] + r["write_ms"] for r in rows), 1),
            "capture_ms": round(statistics.median(r["capture_ms"] for r in rows), 1),
            "write_ms": round(statistics.median(r["write_ms"] for r in rows), 1),
            "share": round(share, 5), "under_2_percent": share < 0.02,
            "per_epoch": [{**r, "share": round(r["share"], 5)} for r in rows]}


register_case("checkpoint every epoch: cost vs the epoch", checkpoint_cost)
