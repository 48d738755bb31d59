"""Run folders: atomic writes, exact round trips, and no pickle ever."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import blocks
from lab import runs
from lab.runs import RunError, RunParts, list_runs, load_run, save_run

SPEC = {
    "name": "Tiny BN net",
    "input": [3, 8, 8],
    "classes": 4,
    "layers": [
        {"block": "conv", "params": {"out": 6, "kernel": 3}},
        {"block": "basic_residual", "params": {"out": 8, "stride": 2, "attention": "se"}},
        {"block": "global_avg_pool"},
        {"block": "linear"},
    ],
}


def _trained_model() -> blocks.Network:
    """A network whose weights and BatchNorm buffers are far from their initial values."""
    torch.manual_seed(0)
    model = blocks.build(SPEC)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(16, 3, 8, 8) * 3 + 1
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 4, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _parts(model=None) -> RunParts:
    model = model or _trained_model()
    events = [{"type": "start", "device": "cpu"}, {"type": "end", "status": "completed", "test_acc": 0.5}]
    return RunParts(spec=model.spec, settings={"lr": 0.1, "epochs": 1}, metrics=events,
                    model=model, dataset_info={"name": "toy", "classes": ["a", "b", "c", "d"]})


def test_round_trip_gives_identical_logits_and_records(tmp_path):
    model = _trained_model()
    path = save_run(_parts(model), tmp_path)
    assert path.parent == tmp_path
    assert sorted(p.name for p in path.iterdir()) == sorted(runs.FILES)

    run = load_run(path)
    assert not run.model.training
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(run.model(x), model(x))
    state, loaded = model.state_dict(), run.model.state_dict()
    assert state.keys() == loaded.keys()
    bn_buffers = [k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert bn_buffers and all(torch.equal(state[k], loaded[k]) for k in bn_buffers)
    assert int(loaded[next(k for k in bn_buffers if k.endswith("num_batches_tracked"))]) == 3
    assert run.spec == model.spec
    assert run.settings == {"lr": 0.1, "epochs": 1}
    assert run.metrics[-1] == {"type": "end", "status": "completed", "test_acc": 0.5}
    assert run.end["test_acc"] == 0.5
    assert run.dataset_info["classes"] == ["a", "b", "c", "d"]
    lines = (path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["start", "end"]


def test_failure_mid_write_leaves_no_run_and_no_temp_folder(tmp_path, monkeypatch):
    def broken_save(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(runs, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_run(_parts(), tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert list_runs(tmp_path) == []


class _Exploit:
    """Unpickling this creates a file: proof that the loader executed pickle."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_disguised_as_weights_is_refused_unexecuted(tmp_path, writer):
    path = save_run(_parts(), tmp_path / "runs")
    marker = tmp_path / "pwned"
    payload = {"layers.0.conv.weight": _Exploit(marker)}
    weights = path / "weights.safetensors"
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, weights)
    assert not marker.exists()
    with pytest.raises(RunError, match="not a valid safetensors file"):
        load_run(path)
    assert not marker.exists()
    # The payload is live: unpickling it really would have created the file.
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path):
    path = save_run(_parts(), tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    spec["layers"][0]["params"]["out"] = 7
    (path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(RunError, match="does not fit its spec"):
        load_run(path)


def test_missing_and_broken_files_are_named(tmp_path):
    path = save_run(_parts(), tmp_path)
    (path / "settings.json").write_text("{not json")
    with pytest.raises(RunError, match="settings.json cannot be read as JSON"):
        load_run(path)
    (path / "settings.json").unlink()
    with pytest.raises(RunError, match="settings.json is missing"):
        load_run(path)
    with pytest.raises(RunError, match="not a run folder"):
        load_run(tmp_path / "nowhere")


def test_names_are_unique_sorted_and_listed(tmp_path):
    parts = _parts()
    paths = [save_run(parts, tmp_path) for _ in range(3)]
    assert len(set(paths)) == 3
    for p in paths:
        name = p.name
        assert name[:8].isdigit() and name[8] == "-"
        assert "tiny-bn-net" in name
    (tmp_path / ".tmp-20000101-000000-left-over").mkdir()     # a crashed write
    (tmp_path / "notes").mkdir()                               # not a run
    assert list_runs(tmp_path) == sorted(paths)
    assert list_runs(tmp_path / "missing") == []


def test_slug():
    assert runs.slug("ResNet-18 + CBAM") == "resnet-18-cbam"
    assert runs.slug("../../etc") == "etc"
    assert runs.slug("***") == "network"
