"""`python -m lab blocks | presets | summary`: output, JSON, and one-line errors with status 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import blocks
import presets
from blocks.summary import format_table, summarize
from lab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def call(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, data, name: str = "spec.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


TINY = {"name": "tiny", "input": [1, 8, 8], "classes": 3,
        "layers": [{"block": "conv", "params": {"out": 8, "kernel": 3, "norm": "none"}},
                   {"block": "global_avg_pool"}, {"block": "linear"}]}


# --- as a user runs it ---------------------------------------------------------------------------

def test_subprocess_summary_json_of_a_preset():
    r = run_lab("summary", "--preset", "resnet18", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["params"] == 11_689_512
    assert [l["block"] for l in data["layers"]][:2] == ["conv", "maxpool"]


@pytest.mark.parametrize("args, message", [
    (["summary", "--preset", "ResNet-19"], "error: unknown preset 'ResNet-19'; presets: LeNet-5, "),
    (["summary"], "error: one of the arguments --preset --spec is required"),
])
def test_subprocess_errors_are_one_line_with_status_2(args, message):
    r = run_lab(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(message)


# --- blocks --------------------------------------------------------------------------------------

def test_blocks_text_lists_every_block_with_its_parameters(capsys):
    code, out, _ = call(capsys, "blocks")
    assert code == 0
    infos = blocks.list_blocks()
    for b in infos:
        assert f"{b.name}: {b.description}" in out
        for p in b.params:
            assert p.describe() in out
    assert "== convolution ==" in out and "== attention ==" in out
    assert "    params: reduction=16 [1..256], kernel=7 [1..15]" in out  # cbam
    assert "    paper: Woo et al. 2018, CBAM: Convolutional Block Attention Module" in out


def test_blocks_json(capsys):
    code, out, _ = call(capsys, "blocks", "--json")
    data = json.loads(out)
    assert code == 0
    assert [d["name"] for d in data] == [b.name for b in blocks.list_blocks()]
    conv = next(d for d in data if d["name"] == "conv")
    assert conv["group"] == "convolution"
    assert conv["params"][0] == {"name": "out", "type": "int", "default": 64, "help": "output channels",
                                 "min": 1, "max": 8192, "choices": None, "channels": True,
                                 "describe": "out=64 [1..8192]"}


# --- presets -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def preset_rows():
    from lab.cli.cmd_presets import preset_rows
    return preset_rows()


def test_presets_json_at_each_default_input(capsys, monkeypatch, preset_rows):
    import lab.cli.cmd_presets
    calls = []
    monkeypatch.setattr(lab.cli.cmd_presets, "preset_rows",
                        lambda *a: calls.append(a) or preset_rows)  # summarised once, in the fixture
    code, out, _ = call(capsys, "presets", "--json")
    assert code == 0 and calls == [(None, None, None, [])]
    rows = json.loads(out)
    assert [r["name"] for r in rows] == presets.list_presets()
    by = {r["name"]: r for r in rows}
    assert by["ResNet-18"]["params"] == 11_689_512
    assert by["ResNet-18"]["flops"] == summarize(presets.load_preset("ResNet-18")).flops
    assert (by["LeNet-5"]["input"], by["LeNet-5"]["classes"]) == ([1, 28, 28], 10)
    assert by["VGG-11"]["input"] == [3, 224, 224] and by["VGG-11"]["width"] == 1.0
    assert by["ResNet-18 + CBAM"]["slug"] == "resnet18_cbam"

    code, out, _ = call(capsys, "presets")
    lines = out.splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[7].split()[:3] == ["ResNet-18", "resnet18", "3×224×224"]
    assert "11,689,512" in lines[7] and "3.63G" in lines[7]


def test_presets_by_name_with_overrides(capsys):
    code, out, _ = call(capsys, "presets", "resnet18_cbam", "LeNet-5", "--input", "1x28x28",
                        "--classes", "10", "--width", "0.25", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["ResNet-18 + CBAM", "LeNet-5"]
    assert {(tuple(r["input"]), r["classes"], r["width"]) for r in rows} == {((1, 28, 28), 10, 0.25)}
    s = summarize(presets.load_preset("ResNet-18 + CBAM", (1, 28, 28), 10, 0.25))
    assert (rows[0]["params"], rows[0]["flops"]) == (s.params, s.flops)
    # LeNet-5 at width 0.25: conv 1->2 (5·5·2 + 2), conv 2->4 (2·25·4 + 4), 4·5·5->30, 30->21, 21->10
    assert rows[1]["params"] == 52 + 204 + (100 * 30 + 30) + (30 * 21 + 21) + (21 * 10 + 10)


@pytest.mark.parametrize("args, message", [
    (["--input", "3by32by32"], "error: --input must look like 3x224x224"),
    (["AlexNet", "nope"], "error: unknown preset 'nope'; presets: LeNet-5, AlexNet"),
])
def test_presets_errors(capsys, args, message):
    code, out, err = call(capsys, "presets", *args)
    assert code == 2 and out == "" and err.startswith(message) and err.count("\n") == 1


# --- summary -------------------------------------------------------------------------------------

def test_summary_table_is_format_table(capsys):
    code, out, _ = call(capsys, "summary", "--preset", "ResNet-18 + CBAM", "--input", "3x32x32",
                        "--width", "0.25", "--classes", "10")
    assert code == 0
    expected = format_table(summarize(presets.load_preset("ResNet-18 + CBAM", (3, 32, 32), 10, 0.25)))
    assert out == expected + "\n"
    assert "total" in out.splitlines()[-1] and "708,208" in out.splitlines()[-1]


@pytest.mark.parametrize("shape", ["3x32x32", "3×32×32", "3,32,32", " 3 X 32 X 32 "])
def test_input_syntaxes(capsys, shape):
    code, out, _ = call(capsys, "summary", "--preset", "lenet5", "--input", shape, "--json")
    assert code == 0
    assert json.loads(out)["input"] == [3, 32, 32]


def test_summary_json_of_a_spec_file_with_exact_numbers(capsys, tmp_path):
    path = write(tmp_path, TINY)
    code, out, _ = call(capsys, "summary", "--spec", path, "--json")
    assert code == 0
    data = json.loads(out)
    # conv 1->8, 3×3 with bias: 8·9 + 8 = 80; linear 8->3: 24 + 3 = 27
    assert data["params"] == 107
    assert [(l["index"], l["block"], l["out_shape"], l["params"]) for l in data["layers"]] == [
        (0, "conv", [8, 8, 8], 80), (1, "global_avg_pool", [8], 0), (2, "linear", [3], 27)]
    # conv: 2·(8·9)·64 multiply-adds' worth = 9216 (the bias add is not counted); linear: 2·8·3
    assert [l["flops"] for l in data["layers"]] == [9216, 0, 48]
    assert data["flops"] == 9264


def test_summary_overrides_apply_to_a_spec_file(capsys, tmp_path):
    path = write(tmp_path, TINY)
    code, out, _ = call(capsys, "summary", "--spec", path, "--json", "--input", "3x8x8",
                        "--classes", "5", "--width", "0.5")
    assert code == 0
    data = json.loads(out)
    # conv 3->4: 4·27 + 4 = 112; linear 4->5: 20 + 5 = 25
    assert (data["input"], data["classes"], data["params"]) == ([3, 8, 8], 5, 137)


@pytest.mark.parametrize("content, message", [
    ("{oops", "': spec is not valid JSON: line 1 column 2: Expecting property name enclosed in double quotes"),
    ("[1, 2]", "must hold a JSON object with 'layers', got a JSON list"),
    ("[" * 100_000 + "]" * 100_000, "': spec is nested 100000 levels deep; the limit is 64"),
    ({"layers": [{"block": "warp_drive"}]}, "layer 0: unknown block 'warp_drive'"),
    ({"layers": []}, "'layers' must be a non-empty list"),
    ({"input": [1, 8, 8], "layers": [{"block": "conv", "params": {"kernel": 11, "padding": 0}},
                                     {"block": "linear"}]},
     "layer 0 (conv): input is 8×8 but kernel 11 needs at least 11×11"),
    ({"layers": [{"block": "conv"}]}, "ends with a 64×32×32 feature map"),
    ({"name": "x", "default": {}, "layers": [], "small_layers": []}, "is a preset file, not a spec; use --preset spec"),
])
def test_bad_spec_files_give_one_line(capsys, tmp_path, content, message):
    code, out, err = call(capsys, "summary", "--spec", write(tmp_path, content))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_spec_file_not_utf8_or_missing_or_too_big(capsys, tmp_path):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    code, _, err = call(capsys, "summary", "--spec", str(binary))
    assert code == 2 and err == f"error: spec file '{binary}': spec file is not UTF-8 text: byte 0\n"

    code, _, err = call(capsys, "summary", "--spec", str(tmp_path / "nope.json"))
    assert code == 2 and "does not exist or is not a file" in err
    code, _, err = call(capsys, "summary", "--spec", str(tmp_path))
    assert code == 2 and "does not exist or is not a file" in err

    big = tmp_path / "big.json"
    big.write_text(json.dumps({**TINY, "notes": "x" * (5 * 1024 * 1024)}))
    code, _, err = call(capsys, "summary", "--spec", str(big))
    assert code == 2 and err == "error: spec file '%s' is 5.0 MB; at most 5 MB is accepted\n" % big

    fits = tmp_path / "fits.json"
    fits.write_text(json.dumps({**TINY, "notes": "x" * (4 * 1024 * 1024)}))
    assert call(capsys, "summary", "--spec", str(fits))[0] == 0


@pytest.mark.parametrize("args, message", [
    (["--preset", "resnet18", "--input", "0x32x32"], "'input' 0×32×32 is out of range"),
    (["--preset", "resnet18", "--input", "3x32x32x3"], "--input must look like 3x224x224"),
    (["--preset", "resnet18", "--width", "0"], "'width' must be a number in (0, 4]"),
    (["--preset", "resnet18", "--classes", "0"], "'classes' must be an integer from 1"),
    (["--preset", "vgg11", "--input", "3x16x15"], "layer 3 (vgg_block): input is 2×1 but its 2×2 pool"),
])
def test_impossible_settings_give_one_line(capsys, args, message):
    code, out, err = call(capsys, "summary", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_argparse_mistakes_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["summary", "--preset", "resnet18", "--spec", "x.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: argument --spec: not allowed with argument --preset\n"
