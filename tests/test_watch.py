"""Watching a view while training (lab/watch.py, visual/watch.py, `lab train --watch`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import blocks
from lab.cli import main
from lab.runs import load_run
from lab.watch import Watcher, watch_events
from visual.watch import snapshot_array, watch_figure, watch_snapshot, watch_views

TINY = {"name": "tiny watched net", "input": [3, 32, 32], "classes": 10, "layers": [
    {"block": "conv", "params": {"out": 8, "kernel": 3, "stride": 2}},
    {"block": "basic_residual", "params": {"out": 8, "attention": "cbam", "reduction": 4}},
    {"block": "ghost_module", "params": {"out": 8, "ratio": 2}},
    {"block": "se", "params": {"reduction": 2}},
    {"block": "global_avg_pool"}, {"block": "linear"}]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return blocks.build(TINY).eval()


def test_every_view_gives_a_small_snapshot(model):
    x = torch.randn(1, 3, 32, 32)
    assert watch_views(model) == ["gradcam", "cbam", "se", "features", "ghost"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = watch_snapshot(model, x, "gradcam", target=3)
    assert g["kind"] == "map" and np.asarray(g["map"]).shape == (32, 32) and g["target"] == 3
    c = watch_snapshot(model, x, "cbam")
    assert c["layer"] == "layers.1.attn" and np.asarray(c["map"]).shape == (16, 16)
    s = watch_snapshot(model, x, "se")
    assert s["kind"] == "values" and len(s["values"]) == 8 and all(0 <= v <= 1 for v in s["values"])
    f = watch_snapshot(model, x, "features", layer="layers.0")
    assert np.asarray(f["maps"]).shape == (8, 16, 16) and f["channels"] == 8
    h = watch_snapshot(model, x, "ghost")
    assert h["layer"] == "layers.2" and np.asarray(h["map"]).shape == (8, 8)
    assert snapshot_array(f).shape == (3 * 17 - 1, 3 * 17 - 1)        # 8 maps tiled 3×3
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    lenet = blocks.build({"input": [1, 28, 28], "layers": [{"block": "conv", "params": {"out": 4}},
                                                           {"block": "global_avg_pool"}, {"block": "linear"}]})
    assert watch_views(lenet) == ["gradcam", "features"]
    with pytest.raises(ValueError, match="no cbam"):
        watch_snapshot(lenet, torch.randn(1, 1, 28, 28), "cbam")


def test_watcher_snapshots_each_epoch_on_a_copy_and_paces_itself(model):
    seen = []

    class FakeTrainer:
        pass
    t = FakeTrainer()
    t.model = model

    def compute(twin):
        seen.append(twin)
        return {"view": "x", "kind": "values", "values": [1.0]}
    w = Watcher(compute, index=4, min_interval=60.0)
    assert w.on_event({"type": "step", "epoch": 0.5, "step": 1}, t) is None      # epoch ends only
    snap = w.on_event({"type": "epoch", "epoch": 1}, t)
    assert snap["type"] == "watch" and snap["epoch"] == 1.0 and snap["index"] == 4
    assert seen[0] is not model and not seen[0].training
    w2 = Watcher(compute, min_interval=0.0, max_share=0.05, during_epoch=True)
    assert w2.on_event({"type": "step", "epoch": 0.1, "step": 1}, t) is not None
    assert w2.on_event({"type": "step", "epoch": 1.0, "step": 10}, t) is None   # its end follows
    w2._wait = 1e6                                     # as if a snapshot took 50,000 s
    assert w2.on_event({"type": "step", "epoch": 0.2, "step": 2}, t) is None
    assert w2.on_event({"type": "epoch", "epoch": 1}, t) is not None             # always at epoch end


def test_three_epoch_run_records_three_different_snapshots(tmp_path, capsys, one_thread):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    assert main(["train", "--spec", str(spec), "--dataset", "shapes", "--epochs", "3",
                 "--train-size", "64", "--test-size", "16", "--batch-size", "32",
                 "--watch", "cbam", "--watch-index", "2", "--out", str(tmp_path / "runs"), "--json"]) == 0
    end = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = load_run(end["run_dir"])
    snaps = watch_events(run.metrics)
    assert [s["epoch"] for s in snaps] == [1.0, 2.0, 3.0] and {s["index"] for s in snaps} == {2}
    types = [e["type"] for e in run.metrics]
    assert [types[i - 1] for i, t in enumerate(types) if t == "watch"] == ["epoch"] * 3
    maps = [np.asarray(s["map"]) for s in snaps]
    assert all(m.shape == (16, 16) for m in maps)
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])
    # the last snapshot is the trained model's own map
    last = watch_snapshot(run.model, _image(2), "cbam")
    assert np.allclose(np.asarray(last["map"]), maps[2], atol=2e-4)
    view = watch_figure(snaps)
    assert view.data["frames"] == 3 and len(view.figure.frames) == 3
    assert view.figure.layout.sliders[0].active == 2
    assert view.figure.data[0].colorbar.title.text           # every colour bar says what it is


def _image(index):
    from lab.datasets import load_dataset
    ds = load_dataset("shapes", seed=0, train_size=64, test_size=16)
    return ds.normalize(ds.test_x[index:index + 1])


def test_watch_mistakes_are_one_line(tmp_path, capsys):
    assert main(["train", "--preset", "LeNet-5", "--dataset", "shapes", "--epochs", "1",
                 "--train-size", "32", "--test-size", "8", "--watch", "cbam",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no cbam view" in err and "\n" not in err
    assert main(["train", "--preset", "LeNet-5", "--dataset", "shapes", "--epochs", "1",
                 "--train-size", "32", "--test-size", "8", "--watch", "gradcam",
                 "--watch-index", "8", "--out", str(tmp_path)]) == 2
    assert "--watch-index must be from 0 to 7" in capsys.readouterr().err


def test_watch_every_adds_paced_snapshots_inside_epochs(tmp_path, capsys, one_thread):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    assert main(["train", "--spec", str(spec), "--dataset", "shapes", "--epochs", "1",
                 "--train-size", "96", "--test-size", "8", "--batch-size", "32",
                 "--report-interval", "0", "--watch", "gradcam", "--watch-every", "0.001",
                 "--out", str(tmp_path / "runs"), "--json"]) == 0
    end = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    snaps = watch_events(load_run(end["run_dir"]).metrics)
    inside = [s for s in snaps if s["step"] is not None]
    assert inside and all(0 < s["epoch"] < 1 for s in inside)
    assert [s["epoch"] for s in snaps if s["step"] is None] == [1.0]
    assert main(["train", "--spec", str(spec), "--dataset", "shapes", "--epochs", "1",
                 "--train-size", "32", "--test-size", "8", "--watch", "gradcam",
                 "--watch-every", "0", "--out", str(tmp_path / "runs")]) == 2
    assert "--watch-every must be a positive" in capsys.readouterr().err
