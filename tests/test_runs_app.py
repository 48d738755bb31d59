"""The runs folder in the app (issue 14), through its plain handler functions: runs written
by `lab train` and by torchrun appear in the pickers and open in Inspect; the app continues
a stopped CLI run exactly; rename, delete, run .zip download and upload; damaged folders
are named and skipped; on a public host two visitors see nothing of each other's runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lab.cli import main
from lab.runs import list_runs, load_run
from lab.serve.session import Session, SessionError, public_mode, shared_runs_dir
from ui import inspect as inspect_tab
from ui import runs as runs_ui
from ui import train as train_tab
from ui.export import exporter

ROOT = Path(__file__).resolve().parents[1]
NET = {"name": "App net", "layers": [
    {"block": "conv", "params": {"out": 8, "kernel": 3, "stride": 2}},
    {"block": "dropout", "params": {"p": 0.2}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}
SMALL = ["--dataset", "digits", "--train-size", "128", "--test-size", "32", "--batch-size", "16",
         "--device", "cpu", "--report-interval", "0"]
TIMING = ("elapsed_s", "images_per_sec", "eta_s")


def _untimed(path: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in load_run(path).metrics]


def _weights(path: Path) -> dict:
    return load_file(str(path / "weights.safetensors"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict:
    """A shared runs folder holding a CLI run stopped after 1 of 2 epochs, a 2-process
    torchrun run and a damaged folder; and, elsewhere, the CLI run never stopped."""
    root = tmp_path_factory.mktemp("runs")
    spec = root.parent / "net.json"
    spec.write_text(json.dumps(NET))
    torch.set_num_threads(1)
    assert main(["train", "--spec", str(spec), *SMALL, "--epochs", "2", "--stop-after", "1",
                 "--out", str(root)]) == 0
    [cli] = list_runs(root)
    whole = tmp_path_factory.mktemp("whole")
    assert main(["train", "--spec", str(spec), *SMALL, "--epochs", "2", "--out", str(whole)]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", "-m", "lab", "train", "--spec", str(spec), *SMALL,
                           "--epochs", "1", "--json", "--out", str(root)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torchrun = Path(json.loads(proc.stdout.splitlines()[-1])["run_dir"])
    (root / "half-copied").mkdir()
    (root / "half-copied" / "spec.json").write_text(json.dumps(NET))
    return {"root": root, "cli": cli, "torchrun": torchrun, "whole": list_runs(whole)[0]}


def test_the_mode_follows_the_host(monkeypatch, tmp_path):
    assert public_mode({"SPACE_ID": "me/convscope"}) and public_mode({"CONVSCOPE_PUBLIC": "1"})
    assert not public_mode({}) and not public_mode({"SPACE_ID": "x", "CONVSCOPE_PUBLIC": "0"})
    assert shared_runs_dir({}) == Path("runs")
    assert shared_runs_dir({"CONVSCOPE_RUNS_DIR": str(tmp_path)}) == tmp_path
    assert shared_runs_dir({"SPACE_ID": "me/convscope", "CONVSCOPE_RUNS_DIR": str(tmp_path)}) is None


def test_cli_and_torchrun_runs_appear_and_open_in_inspect(folder):
    s = Session(key="local-a", runs_dir=folder["root"])
    out = runs_ui.on_list_runs(s)
    inspect_choices = out[1]["choices"]
    ids = [v for _, v in inspect_choices]
    assert ids == [folder["torchrun"].name, folder["cli"].name]       # newest first, damaged left out
    assert "App net" in inspect_choices[0][0] and "digits" in inspect_choices[0][0]
    assert "half-copied: is not a complete run: settings.json is missing" in out[-1]
    for run_id in ids:
        picked = inspect_tab.on_pick_run(s, run_id)
        assert len(picked[1]["value"]) > 0                              # its test images
        _, fig, top5, note, _ = inspect_tab.on_inspect(s, run_id, "saliency",
                                                       {"source": "test", "index": 0}, "")
        assert len(top5) == 5 and fig is not None
    assert s.run(folder["torchrun"].name).start["processes"] == 2
    s.close()
    assert folder["torchrun"].is_dir()          # closing a session never touches the folder


def test_the_app_continues_a_stopped_cli_run_exactly(folder):
    s = Session(key="local-b", runs_dir=folder["root"])
    outs = list(train_tab.on_continue(s, folder["cli"].name, None))
    assert "completed" in outs[-1][3], outs[-1][3]
    assert torch.equal(torch.stack([v.float().sum() for v in _weights(folder["cli"]).values()]),
                       torch.stack([v.float().sum() for v in _weights(folder["whole"]).values()]))
    a, b = _weights(folder["cli"]), _weights(folder["whole"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _untimed(folder["cli"]) == _untimed(folder["whole"])
    with pytest.raises(Exception, match="trained 2 epoch"):
        list(train_tab.on_continue(s, folder["cli"].name, 2))
    s.close()


def test_rename_delete_and_a_run_zip_round_trip(folder, tmp_path):
    s1 = Session(key="local-c", runs_dir=folder["root"])
    s2 = Session(key="local-d", runs_dir=folder["root"])
    _, path, note = exporter("run")(s1, folder["torchrun"].name)
    assert path.endswith(".zip") and "run (.zip)" in note
    # Another app (another runs folder) opens the zip: same weights, same metrics.
    other = Session(key="elsewhere", runs_dir=tmp_path / "other-runs")
    out = runs_ui.on_upload_run(other, path)
    [new_id] = [v for _, v in out[1]["choices"]]
    opened = other.run(new_id).path
    a, b = _weights(folder["torchrun"]), _weights(opened)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_run(opened).metrics == load_run(folder["torchrun"]).metrics
    # Rename in one session; another on the same folder sees it at its next refresh.
    out = runs_ui.on_rename_run(other, new_id, "my copy")
    assert "Renamed to my copy" in out[-1]
    again = Session(key="elsewhere-2", runs_dir=tmp_path / "other-runs")
    assert [v for _, v in runs_ui.on_list_runs(again)[1]["choices"]] == ["my copy"]
    assert runs_ui.on_ask_delete("my copy")[0]["visible"] is True     # asks first
    runs_ui.on_delete_run(again, "my copy")
    assert [v for _, v in runs_ui.on_list_runs(other)[1]["choices"]] == []
    with pytest.raises(Exception, match="not a readable zip|zip"):
        runs_ui.on_upload_run(other, str(Path(path).with_suffix(".json")))
    # The shared folder's runs were only read.
    assert [v for _, v in runs_ui.on_list_runs(s2)[1]["choices"]] == \
        [folder["torchrun"].name, folder["cli"].name]
    for s in (s1, s2, other, again):
        s.close()


def test_public_visitors_see_nothing_of_each_other(folder, tmp_path):
    a = Session(key="visitor-a", root=tmp_path, runs_dir=None)
    b = Session(key="visitor-b", root=tmp_path, runs_dir=None)
    from lab.runzip import zip_run
    rec = a.import_run(zip_run(folder["cli"], tmp_path / "cli.zip"))
    assert [v for _, v in a.run_choices()] == [rec.id]
    assert b.run_choices() == [] and folder["cli"].name not in str(b.run_choices())
    with pytest.raises(SessionError):
        b.run(rec.id)
    with pytest.raises(SessionError):
        b.remove_run(rec.id)
    assert rec.path.is_relative_to(a.dir) and a.run(rec.id).path.is_dir()
    a.close()
    b.close()


@pytest.fixture
def local_server(folder):
    """The app served in the local mode on `folder`'s runs (sessions read the mode and the
    folder from the environment when a visitor arrives)."""
    from conftest import serve_app
    env = {"CONVSCOPE_PUBLIC": "0", "CONVSCOPE_RUNS_DIR": str(folder["root"])}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with serve_app() as url:
            yield url
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_through_gradio_client_the_folders_runs_open_in_inspect(folder, local_server):
    from gradio_client import Client
    client = Client(local_server, verbose=False)
    listed = client.predict(api_name="/list_runs")          # what a page load or Refresh shows
    inspect_choices = [v for _, v in listed[0]["choices"]]
    assert inspect_choices[:2] == [folder["torchrun"].name, folder["cli"].name], inspect_choices
    assert "half-copied" in listed[-1]
    for run_dir in (folder["torchrun"], folder["cli"]):
        fig, top5, note, preview = client.predict(run_dir.name, "saliency", "", api_name="/inspect")
        assert len(top5["confidences"]) == 5 and "Saliency" in json.dumps(fig), note
    # A run .zip through the upload route: opened as a run of the folder.
    from lab.runzip import zip_run
    from gradio_client import handle_file
    zipped = zip_run(folder["torchrun"], folder["root"].parent / "up" / "copy.zip")
    client.predict(handle_file(str(zipped)), api_name="/upload_run")
    listed = client.predict(api_name="/list_runs")
    copies = [v for _, v in listed[0]["choices"] if v not in (folder["torchrun"].name, folder["cli"].name)]
    assert len(copies) == 1
    a, b = _weights(folder["torchrun"]), _weights(folder["root"] / copies[0])
    assert all(torch.equal(a[k], b[k]) for k in a)
