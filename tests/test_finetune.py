"""Fine-tuning (transfer learning): `lab train --weights FILE|imagenet --freeze backbone|none`.
A new classifier for the data set's classes, a frozen backbone that does not move (BatchNorm
statistics included), the weights' normalisation, the source recorded, exports working, and
a pretrained start that beats training from scratch at the same small budget."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image
from safetensors.torch import load_file

import blocks
import presets
from lab.cli import main
from lab.data.shapes import generate_shapes
from lab.datasets import load_dataset
from lab.pretrained import start_from
from lab.runs import save_run
from lab.train.trainer import Trainer, TrainingError, TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")

ROUND, ANGULAR = {0, 5, 6}, {1, 2, 3}       # circle, ring, ellipse / square, triangle, star


def two_class_zip(path: Path, n: int, seed: int) -> Path:
    """A folder-per-class zip: 'round' vs 'angular' shapes, a task the 10 shapes classes
    do not pose (drawn with another seed and stream than any training split)."""
    images, labels, _ = generate_shapes(n, seed=seed, stream=3)
    with zipfile.ZipFile(path, "w") as z:
        for i, (im, label) in enumerate(zip(images, labels.tolist())):
            cls = "round" if label in ROUND else "angular" if label in ANGULAR else None
            if cls:
                buf = io.BytesIO()
                Image.fromarray(im.transpose(1, 2, 0)).save(buf, "PNG")
                z.writestr(f"{cls}/{i}.png", buf.getvalue())
    return path


@pytest.fixture(scope="module")
def r18_pth(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    return path


def test_freeze_backbone_trains_only_the_head_and_attention(tmp_path, r18_pth, capsys):
    data = two_class_zip(tmp_path / "two.zip", 60, seed=3)
    assert main(["train", "--preset", "ResNet-18 + CBAM", "--weights", str(r18_pth), "--dataset", str(data),
                 "--input", "3x64x64", "--freeze", "backbone", "--epochs", "1", "--batch-size", "8",
                 "--out", str(tmp_path / "runs"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    start, end = lines[0], lines[-1]
    assert start["start_weights"]["loaded"] == 100 and start["start_weights"]["new"] == 48 + 2
    run = Path(end["run_dir"])
    # the state training started from: the trainer's seed, the build, the same load
    torch.manual_seed(0)
    before_model = blocks.build(presets.load_preset("ResNet-18 + CBAM", (3, 64, 64), 2))
    start_from(before_model, r18_pth, "backbone")
    before = before_model.state_dict()
    after = load_file(str(run / "weights.safetensors"))
    assert set(after) == set(before)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    expected = sorted(k for k in before if ".attn." in k or k.startswith("layers.7."))
    assert changed == expected and len(changed) == 48 + 2
    settings = json.loads((run / "settings.json").read_text())
    assert (settings["weights"], settings["freeze"]) == (str(r18_pth), "backbone")
    info = json.loads((run / "dataset.json").read_text())
    assert info["mean"] == [0.485, 0.456, 0.406] and info["input_shape"] == [3, 64, 64]
    assert info["classes"] == ["angular", "round"]
    # exports still work for such a run
    for fmt, name in (("py", "net.py"), ("safetensors", "w.safetensors")):
        assert main(["export", "--run", str(run), "--format", fmt, "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 0


def test_freeze_none_moves_the_backbone_and_frozen_batchnorm_stays_in_eval(r18_pth, tmp_path):
    ds = load_dataset(str(two_class_zip(tmp_path / "two.zip", 40, seed=4)), image_size=64)
    spec = presets.load_preset("ResNet-18", (3, 64, 64), 2)
    frozen = Trainer(spec, TrainSettings(epochs=1, batch_size=8, weights=str(r18_pth), freeze="backbone"), ds)
    bns = [m for m in frozen.model.modules() if isinstance(m, nn.BatchNorm2d)]
    frozen.model.train()
    assert bns and not any(m.training for m in bns)
    assert frozen.start_weights["trainable_params"] == 512 * 2 + 2
    free = Trainer(spec, TrainSettings(epochs=1, batch_size=8, weights=str(r18_pth)), ds)
    before = {k: v.clone() for k, v in free.model.state_dict().items()}
    list(free.run())
    after = free.model.state_dict()
    assert not torch.equal(before["layers.0.conv.weight"], after["layers.0.conv.weight"])
    assert not torch.equal(before["layers.0.bn.running_mean"], after["layers.0.bn.running_mean"])
    with pytest.raises(ValueError, match="freeze backbone needs starting weights"):
        TrainSettings(freeze="backbone")
    with pytest.raises(TrainingError, match="the weights do not fit ResNet-18 at 3×64×64"):
        Trainer(presets.load_preset("ResNet-18", (3, 64, 64), 2, 0.5),
                TrainSettings(epochs=1, weights=str(r18_pth)), ds)


def test_fine_tuning_from_shapes_beats_training_from_scratch(tmp_path):
    """ResNet-18 (width 0.125, 32×32) trained briefly on the 10 shapes classes and saved, then
    fine-tuned to round-vs-angular, against the same network from scratch at the same budget."""
    shapes = load_dataset("shapes", seed=0, train_size=1200, test_size=200)
    pre = Trainer(presets.load_preset("ResNet-18", (3, 32, 32), 10, 0.125),
                  TrainSettings(epochs=2, batch_size=32, seed=0), shapes)
    list(pre.run())
    weights = save_run(pre, tmp_path / "runs") / "weights.safetensors"
    two = load_dataset(str(two_class_zip(tmp_path / "two.zip", 360, seed=7)))
    spec = presets.load_preset("ResNet-18", (3, 32, 32), 2, 0.125)
    results = {}
    for label, extra in (("scratch", {}), ("fine-tuned", {"weights": str(weights)}),
                         ("head only", {"weights": str(weights), "freeze": "backbone"})):
        t = Trainer(spec, TrainSettings(epochs=3, batch_size=16, lr=3e-3, seed=0, **extra), two)
        results[label] = [e["test_acc"] for e in t.run() if e["type"] == "epoch"]
    print(results)
    # With PreciseBN (BatchNorm statistics recomputed before evaluating) the scratch run
    # reaches 0.73 here (0.50 without); the frozen backbone alone is above chance, not above it.
    assert results["fine-tuned"][-1] >= 0.75 and results["head only"][-1] >= 0.55
    assert results["fine-tuned"][-1] >= results["scratch"][-1] + 0.1


def test_train_tab_fine_tunes_from_a_weights_file_and_public_hosts_refuse_paths(app_env, tmp_path,
                                                                              monkeypatch):
    import gradio as gr
    from safetensors.torch import save_file

    import app
    spec = presets.load_preset("ResNet-18 + CBAM", (3, 32, 32), 10, 0.125)
    args = ("shapes", None, 256, 1, 32, "adam", 3e-3, "onecycle", 0, False, "cpu")
    first = list(app.on_train(None, spec, *args))
    s = first[-1][0]
    base = s.run("run-1").model.state_dict()
    weights = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in base.items()}, str(weights))
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "0")
    outs = list(app.on_train(s, spec, *args, "none", 0, False, str(weights), "backbone"))
    assert "completed" in outs[-1][3]
    rec = s.run(outs[-1][4]["value"])
    assert rec.start["start_weights"]["source"] == str(weights)
    assert rec.start["start_weights"]["freeze"] == "backbone"
    tuned = rec.model.state_dict()
    moved = sorted(k for k in base if not torch.equal(base[k], tuned[k]))
    # the same network's weights bring its CBAM modules too: only the new classifier trains
    assert rec.start["start_weights"]["new"] == 2 and moved == ["layers.6.bias", "layers.6.weight"]
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "1")
    with pytest.raises(gr.Error, match="only come from 'imagenet'"):
        list(app.on_train(s, spec, *args, "none", 0, False, str(weights), "none"))


def test_the_app_inspects_a_cli_fine_tuned_run_at_its_size_and_normalisation(tmp_path, r18_pth, capsys):
    from lab.runs import load_run
    from lab.serve.session import Session, record_from_run
    data = two_class_zip(tmp_path / "two.zip", 40, seed=5)
    assert main(["train", "--preset", "ResNet-18", "--weights", str(r18_pth), "--dataset", str(data),
                 "--input", "3x64x64", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "runs"),
                 "--json"]) == 0
    run_dir = json.loads(capsys.readouterr().out.splitlines()[-1])["run_dir"]
    rec = record_from_run(load_run(run_dir))
    s = Session(key="finetuned", root=tmp_path / "sessions")
    try:
        ds = s.dataset_for(rec)
        assert tuple(ds.input_shape) == (3, 64, 64) and ds.mean == (0.485, 0.456, 0.406)
        own = load_dataset(str(data), image_size=64)
        assert torch.equal(ds.test_x, own.test_x) and own.mean != ds.mean
    finally:
        s.close()
