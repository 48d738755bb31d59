"""Bench case: what watching a view while training costs (`lab train --watch`, goal ≤ 5%).

ResNet-18 + CBAM (width 0.25) on `shapes`, the same seeded run trained with and without a
Grad-CAM snapshot of one test image at every epoch end (computed on a copy of the weights by
the trainer's consumer, as `lab train --watch gradcam` does), in alternating rounds. Reported:
the wall time of each whole run (median over rounds), their ratio, and the share of the watched
run's time spent in snapshots (measured directly, so it is steadier than the ratio on a busy
machine).
"""
from __future__ import annotations

import copy
import statistics
import time

from lab.bench import BenchOptions, register_case

PRESET = "ResNet-18 + CBAM"
WIDTH = 0.25
VIEW = "gradcam"


def _run(spec, settings, ds, watch: bool) -> tuple[float, float, int]:
    """(seconds of the whole run, seconds in snapshots, snapshots) of one training."""
    from lab.train.trainer import Trainer
    from lab.watch import Watcher
    from visual.watch import watch_snapshot
    trainer = Trainer(copy.deepcopy(spec), settings, ds)
    x = ds.normalize(ds.test_x[:1])
    target = int(ds.test_y[0])
    watcher = Watcher(lambda m: watch_snapshot(m, x, VIEW, None, target)) if watch else None
    t0 = time.perf_counter()
    for event in trainer.run():
        if watcher is not None:
            snap = watcher.on_event(event, trainer)
            if snap is not None:
                trainer.history.append(snap)
    return time.perf_counter() - t0, (watcher.seconds if watcher else 0.0), \
        (len(watcher.snapshots) if watcher else 0)


def watch_cost(options: BenchOptions) -> dict:
    from lab.datasets import load_dataset
    from lab.train.trainer import TrainSettings
    from presets import load_preset
    n_train = 512 if options.quick else 2048
    epochs = 2
    ds = load_dataset("shapes", options.data_root, seed=0, train_size=n_train, test_size=256)
    spec = load_preset(PRESET, input_shape=ds.input_shape, classes=len(ds.classes), width=WIDTH)
    settings = TrainSettings(dataset="shapes", epochs=epochs, batch_size=64, device=options.device)
    plain, watched, shares = [], [], []
    snaps = 0
    for r in range(options.n_rounds):
        for watch in ((False, True) if r % 2 == 0 else (True, False)):
            seconds, in_snaps, snaps_now = _run(spec, settings, ds, watch)
            if watch:
                watched.append(seconds)
                shares.append(in_snaps / seconds)
                snaps = snaps_now
            else:
                plain.append(seconds)
    a, b = statistics.median(plain), statistics.median(watched)
    share = statistics.median(shares)
    return {"kind": "watch", "model": f"{PRESET} (width {WIDTH})", "view": VIEW,
            "train_images": n_train, "epochs": epochs, "snapshots": snaps,
            "run_s_plain": round(a, 3), "run_s_watched": round(b, 3), "ratio": round(b / a, 4),
            "snapshot_share": round(share, 4), "snapshot_ms": round(1000 * share * b / max(snaps, 1), 1),
            "within_5_percent": share <= 0.05}


register_case("train while watching Grad-CAM each epoch vs not", watch_cost)
