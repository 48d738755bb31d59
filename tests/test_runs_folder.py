"""The runs folder (issue 14): listing newest first with damaged folders named and skipped,
rename and delete, run zips that round-trip, and hostile run zips refused with one line."""
from __future__ import annotations

import io
import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import blocks
from lab.export.formats import export_run
from lab.runs import (RunError, RunParts, delete_run, load_run, rename_run, run_info, save_run,
                      scan_runs)
from lab.runzip import import_run_zip
from lab.safezip import ZipLimits

SPEC = {"name": "Zip net", "input": [1, 8, 8], "classes": 3, "layers": [
    {"block": "conv", "params": {"out": 4, "kernel": 3}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}


def _run(root: Path, acc: float = 0.5, name: str = "Zip net") -> Path:
    torch.manual_seed(0)
    model = blocks.build({**SPEC, "name": name})
    events = [{"type": "start"}, {"type": "epoch", "epoch": 1, "test_acc": acc},
              {"type": "end", "status": "completed", "test_acc": acc, "epochs": 1}]
    return save_run(RunParts(model.spec, {"dataset": "digits", "epochs": 1}, events, model,
                             {"name": "digits"}), root)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _members(run_dir: Path) -> dict[str, bytes]:
    return {f"r/{p.name}": p.read_bytes() for p in run_dir.iterdir() if not p.name.startswith(".")}


def test_listing_is_newest_first_and_names_damaged_folders(tmp_path):
    old = _run(tmp_path, 0.25, "Old net")
    os.utime(old / "spec.json", (time.time() - 100, time.time() - 100))
    new = _run(tmp_path, 0.75, "New net")
    broken = _run(tmp_path, 0.5, "Broken")
    (broken / "settings.json").write_text("{half")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".tmp-20260101-writer-at-work").mkdir()
    infos = scan_runs(tmp_path)
    good = [i for i in infos if not i.damaged]
    assert [i.path for i in good] == [new, old]
    assert (good[0].network, good[0].dataset, good[0].accuracy, good[0].status) == ("New net", "digits", 0.75, "completed")
    damaged = {i.name: i.damaged for i in infos if i.damaged}
    assert set(damaged) == {broken.name, "empty"}
    assert damaged[broken.name].startswith("settings.json cannot be read as JSON")
    assert "spec.json is missing" in damaged["empty"]
    assert all("\n" not in d for d in damaged.values())
    # Weights that do not fit the spec: damaged, found from the header alone.
    spec = json.loads((new / "spec.json").read_text())
    spec["layers"][0]["params"]["out"] = 5
    (new / "spec.json").write_text(json.dumps(spec))
    assert "does not fit spec.json" in run_info(new).damaged
    assert scan_runs(tmp_path / "nowhere") == []


def test_rename_and_delete(tmp_path):
    path = _run(tmp_path)
    renamed = rename_run(tmp_path, path.name, "my best run")
    assert renamed == tmp_path / "my best run" and load_run(renamed).spec["name"] == "Zip net"
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(RunError, match="is not a run name"):
            rename_run(tmp_path, "my best run", bad)
    other = _run(tmp_path)
    with pytest.raises(RunError, match="exists already"):
        rename_run(tmp_path, other.name, "my best run")
    delete_run(tmp_path, "my best run")
    assert [i.path for i in scan_runs(tmp_path)] == [other]
    with pytest.raises(RunError, match="there is no run"):
        delete_run(tmp_path, "my best run")


def test_a_run_zip_round_trips(tmp_path):
    src = _run(tmp_path / "a")
    zipped = export_run(src, "run", f"{tmp_path}/out/")
    assert zipped.name == f"{src.name}.zip"
    dst = import_run_zip(zipped, tmp_path / "b")
    assert dst.name == src.name
    a, b = load_run(src), load_run(dst)
    assert a.metrics == b.metrics and a.settings == b.settings and a.spec == b.spec
    wa, wb = load_file(str(src / "weights.safetensors")), load_file(str(dst / "weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # Zipped by hand, files at the top: taken too, under a fresh name.
    flat = _zip(tmp_path / "flat.zip", {p.name: p.read_bytes() for p in src.iterdir()})
    again = import_run_zip(flat, tmp_path / "b")
    assert again != dst and load_run(again).metrics == a.metrics


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def _hostile(tmp_path: Path, good: dict[str, bytes]) -> dict[str, tuple[dict[str, bytes], str]]:
    marker = tmp_path / "pwned"
    other = blocks.build({**SPEC, "layers": [{"block": "conv", "params": {"out": 6, "kernel": 3}},
                                             *SPEC["layers"][1:]]})
    buf = io.BytesIO()
    torch.save({"w": _Exploit(marker)}, buf)
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wrong))
    return {
        "traversal": ({**good, "../../evil.json": b"{}"}, "unsafe member names"),
        "absolute": ({**good, "/etc/evil.json": b"{}"}, "unsafe member names"),
        "pickle member": ({**good, "r/model.pkl": pickle.dumps(_Exploit(marker))}, "not part of a run"),
        "pickle as weights": ({**good, "r/weights.safetensors": buf.getvalue()}, "not a valid safetensors"),
        "wrong shapes": ({**good, "r/weights.safetensors": wrong.read_bytes()}, "does not fit its spec.json"),
        "missing file": ({k: v for k, v in good.items() if not k.endswith("spec.json")}, "spec.json missing"),
        "bad json": ({**good, "r/settings.json": b"[" * 50_000}, "settings.json in the zip is not valid JSON"),
        "huge member": ({**good, "r/metrics.jsonl": b"\n" * (3 << 20)}, "zip bomb"),
    }


def test_hostile_run_zips_are_refused_with_one_line(tmp_path):
    good = _members(_run(tmp_path / "src"))
    root = tmp_path / "runs"
    for case, (members, words) in _hostile(tmp_path, good).items():
        path = _zip(tmp_path / f"{case}.zip", members)
        with pytest.raises(RunError) as info:
            import_run_zip(path, root)
        assert words in str(info.value), (case, str(info.value))
        assert "\n" not in str(info.value), case
    # Past the size limit, whatever the ratio.
    with pytest.raises(RunError, match="more than the limit"):
        import_run_zip(_zip(tmp_path / "big.zip", good), root, ZipLimits(max_total_bytes=1000))
    assert not (tmp_path / "pwned").exists()
    assert not root.exists() or list(root.iterdir()) == []


def test_a_run_being_written_is_listed_as_running_then_interrupted(tmp_path):
    from lab.runs import RunWriter
    torch.manual_seed(0)
    model = blocks.build(SPEC)
    parts = RunParts(model.spec, {"dataset": "digits"}, [{"type": "start"},
                     {"type": "epoch", "epoch": 1, "test_acc": 0.4}], model, {"name": "digits"})
    writer = RunWriter(tmp_path, "in progress")
    path = writer.save(parts)
    [info] = scan_runs(tmp_path)
    assert (info.status, info.epochs, info.accuracy) == ("running", 1, 0.4)
    with pytest.raises(RunError, match="still training"):
        delete_run(tmp_path, path.name)
    writer.close()                                  # the process is gone, no end event
    assert scan_runs(tmp_path)[0].status == "interrupted"
