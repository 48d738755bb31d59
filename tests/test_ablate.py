"""Ablation runs (lab/ablate.py, `python -m lab ablate`): variants that differ only where
they should, share seed, data and settings, and survive each other's failure or stop."""
from __future__ import annotations

import json

import pytest

from blocks.summary import summarize
from lab.ablate import (AblationError, ablation_specs, run_ablation, summarize_rows, swap_attention,
                        swap_ghost)
from lab.cli import main
from lab.datasets import load_dataset
from lab.runs import load_run
from lab.train.trainer import TrainSettings
from presets import load_preset

TINY = {"name": "tiny attention net", "input": [3, 32, 32], "classes": 10, "layers": [
    {"block": "conv", "params": {"out": 8, "kernel": 3, "stride": 2}},
    {"block": "basic_residual", "params": {"out": 8, "attention": "cbam", "reduction": 4}},
    {"block": "global_avg_pool"}, {"block": "linear"}]}
SETTINGS = dict(dataset="shapes", epochs=1, batch_size=32, lr=5e-3, report_interval=0.0)


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", seed=0, train_size=96, test_size=32)


def _without_attention(spec: dict) -> list:
    return [{**l, "params": {k: v for k, v in (l.get("params") or {}).items() if k != "attention"}}
            for l in spec["layers"]]


def test_resnet18_variants_differ_only_in_attention():
    spec = load_preset("ResNet-18 + CBAM", (3, 32, 32), 10, 0.25)
    specs = ablation_specs(spec, ["none", "se", "cbam"])
    assert list(specs) == ["attention none", "attention se", "attention cbam"]
    params = [summarize(s).params for s in specs.values()]
    assert params[0] < params[1] < params[2]
    assert params[2] == summarize(spec).params                # the preset is the CBAM variant
    assert params[0] == summarize(load_preset("ResNet-18", (3, 32, 32), 10, 0.25)).params
    for s in specs.values():
        assert _without_attention(s) == _without_attention(spec)
        assert [s[k] for k in ("input", "classes", "width")] == \
            [spec[k] for k in ("input", "classes", "width")]


def test_swaps_of_standalone_attention_and_ghost_modules():
    spec = {"layers": [{"block": "conv", "params": {"out": 8}}, {"block": "se", "params": {"reduction": 2}},
                       {"block": "ghost_module", "params": {"out": 16, "kernel": 3, "ratio": 2}},
                       {"block": "global_avg_pool"}, {"block": "linear"}]}
    assert [l["block"] for l in swap_attention(spec, "none")["layers"]] == \
        ["conv", "ghost_module", "global_avg_pool", "linear"]
    assert swap_attention(spec, "cbam")["layers"][1] == {"block": "cbam", "params": {"reduction": 2}}
    conv = swap_ghost(spec)["layers"][2]
    assert conv == {"block": "conv", "params": {"out": 16, "kernel": 3, "stride": 1, "norm": "batch",
                                                "act": "relu"}}
    specs = ablation_specs(spec, ghost=["ghost", "conv"])
    assert summarize(specs["ghost modules"]).params < summarize(specs["regular convs"]).params
    # a Ghost bottleneck (16 -> 48 -> 16) with the regular 1×1 convs its Ghost modules replace
    gb = {"input": [16, 8, 8], "layers": [{"block": "ghost_bottleneck", "params": {"out": 16, "mid": 48}},
                                           {"block": "global_avg_pool"}, {"block": "linear"}]}
    variants = ablation_specs(gb, ghost=["ghost", "conv"])
    layer = [summarize(v).layers[0].params for v in variants.values()]
    assert layer == [(16 * 24 + 48 + 24 * 9 + 48) + (48 * 8 + 16 + 8 * 9 + 16),   # s = 2, d = 3
                     (16 * 48 + 2 * 48) + (48 * 16 + 2 * 16)]
    with pytest.raises(AblationError, match="no block with an attention choice"):
        ablation_specs(load_preset("LeNet-5"), ["none", "se"])
    with pytest.raises(AblationError, match="no Ghost module"):
        ablation_specs(TINY, ghost=["conv"])


def test_variants_share_seed_data_and_settings(tmp_path, data, one_thread):
    settings = TrainSettings(**SETTINGS, seed=3)
    rows = run_ablation(ablation_specs(TINY, ["none", "se", "cbam"]), settings, data, out=tmp_path)
    assert [r["status"] for r in rows] == ["completed"] * 3
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]
    runs = [load_run(r["run_dir"]) for r in rows]
    assert all(r.settings == runs[0].settings for r in runs) and runs[0].settings["seed"] == 3
    assert all(r.dataset_info == runs[0].dataset_info for r in runs)
    starts = [next(e for e in r.metrics if e["type"] == "start") for r in runs]
    for key in ("train_size", "test_size", "steps_per_epoch", "total_steps"):
        assert len({s[key] for s in starts}) == 1
    assert [r.spec["name"] for r in runs] == [f"tiny attention net · attention {a}"
                                              for a in ("none", "se", "cbam")]


def test_a_failed_or_stopped_variant_leaves_the_others(tmp_path, data, one_thread):
    broken = {**TINY, "layers": [{"block": "conv", "params": {"out": 8, "kernel": 99}}] + TINY["layers"][1:]}
    specs = {"first": TINY, "broken": broken, "stopped": TINY, "last": swap_attention(TINY, "se")}

    def on_event(label, seed, event, trainer):
        if label == "stopped" and event["type"] == "step":
            trainer.stop()
    rows = run_ablation(specs, TrainSettings(**SETTINGS), data, out=tmp_path, on_event=on_event)
    status = {r["label"]: r["status"] for r in rows}
    assert status == {"first": "completed", "broken": "failed", "stopped": "stopped", "last": "completed"}
    assert "kernel" in rows[1]["message"] and rows[1]["run_dir"] is None
    for r in (rows[0], rows[2], rows[3]):
        assert load_run(r["run_dir"]).metrics[-1]["status"] == r["status"]
    assert len(list(tmp_path.iterdir())) == 3


def test_seeds_give_mean_and_std(tmp_path, data, one_thread):
    rows = run_ablation({"cbam": TINY}, TrainSettings(**SETTINGS), data, out=None, seeds=2)
    assert [r["seed"] for r in rows] == [0, 1] and all(r["run_dir"] is None for r in rows)
    (s,) = summarize_rows(rows)
    accs = [r["best_test_acc"] for r in rows]
    assert s["completed"] == 2 and s["best_test_acc"] == pytest.approx(sum(accs) / 2)
    assert s["best_test_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)


def test_cli_ablate_json_with_energy_in_mask(tmp_path, capsys, one_thread):
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(TINY))
    code = main(["ablate", "--spec", str(spec_file), "--attention", "none,cbam", "--dataset", "shapes",
                 "--epochs", "1", "--train-size", "64", "--test-size", "16", "--batch-size", "32",
                 "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    none, cbam = out["summary"]
    assert (none["label"], cbam["label"]) == ("attention none", "attention cbam")
    assert 0 <= none["energy_gradcam"] <= 1 and "energy_cbam" not in none
    assert 0 <= cbam["energy_cbam"] <= 1 and none["energy_uniform"] == cbam["energy_uniform"]
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_cli_ablate_mistakes_are_one_line(capsys):
    assert main(["ablate", "--preset", "LeNet-5", "--attention", "none,se", "--train-size", "16",
                 "--test-size", "8", "--dataset", "shapes"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no block with an attention choice" in err and "\n" not in err
    assert main(["ablate", "--preset", "LeNet-5"]) == 2
    assert "--attention" in capsys.readouterr().err
