"""`python -m lab inspect`: views written as HTML and JSON from a run folder, the run's own
test images and normalisation, and one-line errors with exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import blocks
from lab.cli import main
from lab.cli.cmd_inspect import read_image
from lab.datasets import load_dataset
from lab.runs import RunParts, save_run
from visual import feature_grid

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "inspect-cli", "input": [3, 32, 32], "classes": 10,
    "layers": [
        {"block": "conv", "params": {"out": 8}},
        {"block": "basic_residual", "params": {"out": 8, "attention": "cbam", "reduction": 2}},
        {"block": "ghost_module", "params": {"out": 16, "stride": 2}},
        {"block": "se", "params": {"reduction": 4}},
        {"block": "global_avg_pool"},
        {"block": "linear"},
    ],
}
SIZES = dict(train_size=200, test_size=64)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = blocks.build(SPEC)
    ds = load_dataset("shapes", seed=0, **SIZES)
    events = [{"type": "start"}, {"type": "step", "step": 1, "epoch": 0.5, "loss": 2.3},
              {"type": "epoch", "epoch": 1, "train_loss": 2.2, "train_acc": 0.1, "test_loss": 2.25,
               "test_acc": 0.12},
              {"type": "end", "status": "completed"}]
    settings = {"dataset": "shapes", "data_root": str(tmp_path_factory.mktemp("data")), "seed": 0}
    parts = RunParts(SPEC, settings, events, model.eval(), ds.info())
    return save_run(parts, tmp_path_factory.mktemp("runs"))


def call(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_html(run_dir, tmp_path, capsys):
    out = tmp_path / "features.html"
    code, stdout, err = call(capsys, "inspect", "--run", run_dir, "--index", 3, "--view", "features",
                             "--layer", "layers.1.conv1", "--out", out)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out} (features, layers.1.conv1)"
    html = out.read_text()
    assert html.lower().startswith("<!doctype html>") and "Plotly.newPlot" in html
    assert "layer 1 · conv 1: 8 channels" in html   # readable name in the title


def test_index_is_the_runs_test_image_normalised_as_in_training(run_dir, tmp_path, capsys):
    out = tmp_path / "f.json"
    code, _, err = call(capsys, "inspect", "--run", run_dir, "--index", 5, "--view", "features",
                        "--layer", "layers.2", "--sort", "index", "--out", out)
    assert code == 0, err
    data = json.loads(out.read_text())
    ds = load_dataset("shapes", seed=0, **SIZES)
    model = blocks.build(SPEC)
    model.load_state_dict(_weights(run_dir))
    expected = feature_grid(model, ds.normalize(ds.test_x[5:6]), ds.test_x[5], "layers.2", sort="index").data
    assert data["shape"] == [16, 16, 16] and data["order"] == list(range(16))
    assert np.allclose(data["mean"], expected["mean"], atol=1e-4)


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(run_dir / "weights.safetensors"))


@pytest.mark.parametrize("view, layer, key", [
    ("ghost", "layers.2", ("view", "ghost")),
    ("ghost", "layers.1.conv2", ("view", "redundancy")),   # any conv: the similarity matrix
    ("se", None, ("layer", "layers.3")),
    ("cbam", None, ("layer", "layers.1.attn")),
    ("gradcam", "layers.1", ("layer", "layers.1")),
    ("ig", None, ("n_steps", 4)),
    ("saliency", None, ("method", "saliency")),
    ("occlusion", None, ("window", [4, 4])),
])
def test_image_views_as_json(run_dir, tmp_path, capsys, view, layer, key):
    out = tmp_path / "v.json"
    args = ["inspect", "--run", run_dir, "--index", 0, "--view", view, "--steps", 4, "--out", out]
    code, _, err = call(capsys, *args, *(["--layer", layer] if layer else []))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data[key[0]] == key[1]


def test_target_by_name_and_top5(run_dir, tmp_path, capsys):
    out = tmp_path / "g.json"
    code, _, err = call(capsys, "inspect", "--run", run_dir, "--index", 1, "--view", "gradcam",
                        "--target", "star", "--out", out)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["target"] == 3 and data["target_name"] == "star"
    p = data["top5"]["probabilities"]
    assert p == sorted(p, reverse=True) and sum(p) <= 1 + 1e-6 and len(p) == 5


def test_image_file_is_converted_and_resized(run_dir, tmp_path, capsys):
    grey = np.tile(np.linspace(0, 255, 50, dtype=np.uint8), (40, 1))     # 50 wide, 40 high
    path = tmp_path / "g.png"
    Image.fromarray(grey, mode="L").save(path)
    img = read_image(str(path), (3, 32, 32))
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert img[0, :, 0].max() < 20 and img[0, :, -1].min() > 235           # the ramp survives
    out = tmp_path / "s.json"
    code, _, err = call(capsys, "inspect", "--run", run_dir, "--image", path, "--view", "saliency",
                        "--out", out)
    assert code == 0, err
    assert json.loads(out.read_text())["map_shape"] == [32, 32]


def test_split_and_run_views(run_dir, tmp_path, capsys):
    out = tmp_path / "q.json"
    code, _, err = call(capsys, "inspect", "--run", run_dir, "--view", "attention-quality", "--limit", 16,
                        "--steps", 4, "--out", out)
    assert code == 0, err
    q = json.loads(out.read_text())
    ds = load_dataset("shapes", seed=0, **SIZES)
    share = ds.test_masks[:16].flatten(1).double().mean(1).mean()
    assert q["images"] == 16 and set(q["methods"]) == {"cbam", "gradcam", "ig", "saliency", "uniform"}
    assert q["methods"]["uniform"]["energy_in_mask"] == pytest.approx(float(share), abs=1e-6)
    code, _, err = call(capsys, "inspect", "--run", run_dir, "--view", "confusion", "--out", out)
    assert code == 0, err
    assert sum(map(sum, json.loads(out.read_text())["matrix"])) == 64
    code, _, err = call(capsys, "inspect", "--run", run_dir, "--view", "curves", "--out", out)
    assert code == 0, err
    assert json.loads(out.read_text())["runs"][run_dir.name]["test_acc"] == [0.12]


@pytest.mark.parametrize("args, message", [
    (["--index", 0, "--view", "features", "--layer", "layers.9", "--out", "x.json"],
     "error: no inspectable layer 'layers.9'; did you mean"),
    (["--index", 0, "--view", "se", "--layer", "layers.1.attn", "--out", "x.json"], "error: no se layer"),
    (["--index", 64, "--view", "features", "--out", "x.json"], "error: --index must be from 0 to 63"),
    (["--view", "gradcam", "--out", "x.json"], "error: --view gradcam needs an image"),
    (["--index", 0, "--view", "gradcam", "--out", "x.txt"], "error: --out must end in .html, .json, .png"),
    (["--index", 0, "--view", "gradcam", "--target", "blob", "--out", "x.json"], "error: --target must be"),
    (["--index", 0, "--view", "ig", "--steps", 0, "--out", "x.json"], "error: --steps must be"),
])
def test_user_mistakes_are_one_line_and_status_2(run_dir, tmp_path, capsys, args, message):
    args = [a if a not in ("x.json", "x.txt") else tmp_path / a for a in args]
    code, out, err = call(capsys, "inspect", "--run", run_dir, *args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_missing_run_is_a_usage_error(tmp_path, capsys):
    code, _, err = call(capsys, "inspect", "--run", tmp_path / "nope", "--index", 0, "--view", "features",
                        "--out", tmp_path / "x.json")
    assert code == 2 and "is not a run folder" in err


def test_png_without_a_browser_suggests_html(run_dir, tmp_path, capsys, monkeypatch):
    import visual.export
    monkeypatch.setattr(visual.export, "find_browser", lambda: None)
    out = tmp_path / "x.png"
    code, _, err = call(capsys, "inspect", "--run", run_dir, "--index", 0, "--view", "cbam", "--out", out)
    assert code == 2 and ".html" in err and err.count("\n") == 1
    assert not out.exists()


def test_subprocess_bad_layer_lists_valid_names(run_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lab", "inspect", "--run", str(run_dir), "--index", "0",
                        "--view", "gradcam", "--layer", "layers.1.conv", "--out", str(tmp_path / "x.html")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "valid: layers.0, layers.1, layers.1.conv1, layers.1.conv2, layers.1.attn" in lines[0]
    assert not (tmp_path / "x.html").exists()
