"""Exports: the standalone .py (torch alone, same weights, same logits, trains under
torchrun), ONNX against onnxruntime, safetensors, spec JSON, metrics CSV, and the CLI."""
from __future__ import annotations

import ast
import copy
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, safe_open, save_file

import blocks
from lab.export import codegen
from lab.cli import main as cli_main
from lab.export.codegen import ExportError
from lab.export.formats import (EPOCH_COLUMNS, STEP_COLUMNS, export_metrics_csv, export_onnx, export_py,
                        export_run, export_safetensors, export_spec)
from lab.runs import RunParts, save_run

# Four small networks that between them use every registered block.
SPECS = {
    "resnet_cbam": {
        "name": "ResNet-18 + CBAM (small)", "input": [3, 32, 32], "classes": 10, "width": 0.125,
        "layers": [
            {"block": "conv", "params": {"out": 64, "kernel": 3}},
            {"block": "basic_residual", "params": {"out": 64, "attention": "cbam"}, "repeat": 2},
            {"block": "basic_residual", "params": {"out": 128, "stride": 2, "attention": "se"}},
            {"block": "bottleneck_residual",
             "params": {"out": 128, "stride": 2, "groups": 2, "attention": "cbam", "reduction": 4}},
            {"block": "maxpool"},
            {"block": "global_avg_pool"},
            {"block": "linear"},
        ]},
    "ghostnet": {
        "name": "GhostNet-like", "input": [3, 32, 32], "classes": 7, "width": 0.25,
        "layers": [
            {"block": "conv", "params": {"out": 16, "stride": 2, "act": "hardswish"}},
            {"block": "ghost_bottleneck", "params": {"out": 16, "mid": 16}},
            {"block": "ghost_bottleneck", "params": {"out": 24, "mid": 48, "stride": 2, "attention": "se"}},
            {"block": "ghost_bottleneck", "params": {"out": 24, "mid": 72, "kernel": 5, "attention": "cbam"}},
            {"block": "ghost_module", "params": {"out": 32, "ratio": 3, "relu": False}},
            {"block": "se", "params": {"reduction": 4, "gate": "hardsigmoid"}},
            {"block": "hardswish"},
            {"block": "global_avg_pool"},
            {"block": "linear", "params": {"out": 64}},
            {"block": "relu"},
            {"block": "dropout", "params": {"p": 0.2}},
            {"block": "linear"},
        ]},
    "inception_dense": {
        "name": "Inception + DenseNet", "input": [3, 16, 16], "classes": 5, "width": 0.25,
        "layers": [
            {"block": "dilated_conv", "params": {"out": 32}},
            {"block": "lrn"},
            {"block": "inception"},
            {"block": "dense_block", "params": {"layers": 3}},
            {"block": "transition"},
            {"block": "avgpool", "params": {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}},
            {"block": "relu6"},
            {"block": "batchnorm"},
            {"block": "flatten"},
            {"block": "batchnorm"},
            {"block": "tanh"},
            {"block": "linear"},
        ]},
    "mobile_mix": {
        "name": "Mobile mix", "input": [3, 16, 16], "classes": 4, "width": 0.25,
        "layers": [
            {"block": "coord_conv", "params": {"out": 32, "with_r": True}},
            {"block": "depthwise_separable", "params": {"out": 32, "stride": 2}},
            {"block": "inverted_residual", "params": {"out": 32, "expand": 1}},
            {"block": "inverted_residual", "params": {"out": 48, "stride": 2, "attention": "se"}},
            {"block": "depthwise_conv", "params": {"norm": "none", "act": "none"}},
            {"block": "sigmoid"},
            {"block": "pointwise_conv", "params": {"out": 64}},
            {"block": "grouped_conv", "params": {"out": 64, "groups": 4}},
            {"block": "transposed_conv", "params": {"out": 32}},
            {"block": "dropblock", "params": {"p": 0.2, "block_size": 3}},
            {"block": "cbam", "params": {"reduction": 4}},
            {"block": "swish"},
            {"block": "vgg_block", "params": {"out": 32, "convs": 2, "norm": "batch"}},
            {"block": "nin_block", "params": {"out": 32, "kernel": 3, "padding": 1}},
            {"block": "linear"},
        ]},
}
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
TINY = {"name": "Tiny BN net", "input": [3, 8, 8], "classes": 4, "layers": [
    {"block": "conv", "params": {"out": 4}}, {"block": "maxpool"}, {"block": "flatten"},
    {"block": "linear"}]}
ALLOWED_IMPORTS = {"__future__", "argparse", "math", "os", "sys", "time", "collections", "torch",
                   "torch.nn", "torch.nn.functional", "torch.distributed", "torch.nn.parallel",
                   "safetensors.torch", "numpy"}


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Weights away from their initialisation and BatchNorm statistics measured on random
    inputs (as after training), so that matching outputs mean matching computations."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.mul_(1 + 0.3 * noise).add_(0.05 * noise)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None              # a plain average over the batches below
        model.train()
        for _ in range(3):
            model(torch.randn(8, *model.spec["input"], generator=gen))
        for m in norms:
            m.momentum = 0.1
    return model.eval()


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK_SCRIPT = """
import importlib.util, json, sys
import torch
from safetensors.torch import load_file, save_file
cases = json.load(open(sys.argv[1]))
for case in cases:
    spec = importlib.util.spec_from_file_location(case["name"], case["py"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.load(case["weights"])
    data = load_file(case["data"])
    with torch.no_grad():
        out = {"eval": model(data["x"]), "probs": mod.predict(model, data["images"])}
        model.train()
        torch.manual_seed(123)
        out["train"] = model(data["x"])
    save_file(out, case["out"])
    json.dump([[k, list(v.shape)] for k, v in model.state_dict().items()], open(case["keys"], "w"))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("blocks", "lab", "torchvision"))))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every spec exported and run from a fresh interpreter that cannot import ConvScope."""
    root = tmp_path_factory.mktemp("standalone")
    cases, expected = [], {}
    for i, (key, spec) in enumerate(SPECS.items()):
        torch.manual_seed(i)
        model = randomize(blocks.build(spec), seed=i)
        c, h, w = spec["input"]
        x = torch.randn(3, c, h, w, generator=torch.Generator().manual_seed(10 + i))
        images = torch.randint(0, 256, (3, c, h, w), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(20 + i))
        with torch.no_grad():
            mean = torch.tensor(MEAN).view(1, 3, 1, 1)
            std = torch.tensor(STD).view(1, 3, 1, 1)
            expected[key] = {"eval": model(x),
                             "probs": model((images.float() / 255 - mean) / std).softmax(1)}
            twin = copy.deepcopy(model).train()
            torch.manual_seed(123)
            expected[key]["train"] = twin(x)
        expected[key]["keys"] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        export_py(model, root / f"{key}.py", mean=MEAN, std=STD)
        export_safetensors(model, root / f"{key}.safetensors")
        save_file({"x": x, "images": images}, str(root / f"{key}_data.safetensors"))
        cases.append({"name": key, "py": str(root / f"{key}.py"),
                      "weights": str(root / f"{key}.safetensors"),
                      "data": str(root / f"{key}_data.safetensors"),
                      "out": str(root / f"{key}_out.safetensors"), "keys": str(root / f"{key}_keys.json")})
    (root / "cases.json").write_text(json.dumps(cases))
    (root / "check.py").write_text(CHECK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: isolated mode, so neither the repository nor PYTHONPATH is importable.
    proc = subprocess.run([sys.executable, "-I", "check.py", "cases.json"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {c["name"]: {**load_file(c["out"]), "keys": json.loads(Path(c["keys"]).read_text())}
           for c in cases}
    return {"root": root, "expected": expected, "got": got,
            "modules": json.loads(proc.stdout.strip().splitlines()[-1])}


def test_specs_cover_every_registered_block():
    used = {layer["block"] for spec in SPECS.values() for layer in spec["layers"]}
    assert used == {b.name for b in blocks.list_blocks()}


def test_standalone_file_reproduces_eval_logits_for_every_block(exported):
    for key in SPECS:
        want, got = exported["expected"][key]["eval"], exported["got"][key]["eval"]
        assert want.std(dim=0).mean() > 1e-3, f"{key}: degenerate logits make a weak test"
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5), f"{key}: {(got - want).abs().max()}"


def test_standalone_file_reproduces_training_mode_with_the_same_seed(exported):
    # Batch statistics, Dropout and the torch-only DropBlock draw the same random numbers.
    for key in SPECS:
        want, got = exported["expected"][key]["train"], exported["got"][key]["train"]
        assert torch.allclose(got, want, atol=1e-5), f"{key}: {(got - want).abs().max()}"


def test_standalone_file_has_the_same_state_dict_layout(exported):
    for key in SPECS:
        assert exported["got"][key]["keys"] == exported["expected"][key]["keys"]


def test_standalone_predict_applies_the_dataset_normalisation(exported):
    for key in SPECS:
        want, got = exported["expected"][key]["probs"], exported["got"][key]["probs"]
        assert torch.allclose(got.sum(1), torch.ones(len(got)), atol=1e-5)
        assert torch.allclose(got, want, atol=1e-5)


def test_standalone_file_imports_nothing_from_convscope_or_torchvision(exported):
    assert exported["modules"] == []          # nothing of ours was loaded in the subprocess
    for key in SPECS:
        tree = ast.parse((exported["root"] / f"{key}.py").read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
        assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


def test_standalone_file_names_the_network_and_uses_the_block_names(exported):
    text = (exported["root"] / "ghostnet.py").read_text(encoding="utf-8")
    assert text.startswith('#!/usr/bin/env python3\n"""GhostNet-like: a standalone PyTorch network')
    for name in ("class GhostBottleneck(_Module)", "class GhostModule(_Module)",
                 "def forward_parts(self", "class SqueezeExcite(_Module)", "def build_model()"):
        assert name in text
    mod_text = (exported["root"] / "mobile_mix.py").read_text(encoding="utf-8")
    assert "class DropBlock2d(nn.Module)" in mod_text and "DropBlock2d(0.2, 3)" in mod_text


def test_torch_only_dropblock_matches_torchvision():
    from torchvision.ops import DropBlock2d as Reference
    x = torch.randn(4, 6, 12, 10)
    for p, size in ((0.1, 3), (0.4, 5), (0.0, 3)):
        ours, ref = codegen.DropBlock2d(p, size), Reference(p, size)
        torch.manual_seed(7)
        a = ours(x)
        torch.manual_seed(7)
        b = ref(x)
        assert torch.equal(a, b)
        if p:
            dropped = (a == 0).float().mean().item()
            assert 0.3 * p < dropped < 2 * p   # the paper's gamma keeps the drop share near p
    assert torch.equal(codegen.DropBlock2d(0.5, 3).eval()(x), x)


LEAF_SAMPLES = [
    nn.Conv1d(2, 4, 3, stride=2, padding=1, bias=False),
    nn.Conv2d(4, 6, (3, 5), stride=(1, 2), padding=(1, 2), dilation=2, groups=2, padding_mode="reflect"),
    nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False),
    nn.BatchNorm1d(5, eps=1e-3, momentum=None), nn.BatchNorm2d(3, affine=False, track_running_stats=False),
    nn.GroupNorm(2, 4, eps=1e-4, affine=False), nn.LayerNorm([4, 3], elementwise_affine=True, bias=False),
    nn.LocalResponseNorm(3, alpha=2e-4, beta=0.5, k=1.5), nn.Linear(3, 2, bias=False),
    nn.Identity(), nn.Flatten(2, 3), nn.ReLU(), nn.ReLU6(), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(),
    nn.Mish(), nn.Sigmoid(), nn.Tanh(), nn.GELU("tanh"), nn.LeakyReLU(0.2), nn.ELU(0.5), nn.Softmax(1),
    nn.Dropout(0.3), nn.Dropout2d(0.25), nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
    nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=False, divisor_override=2),
    nn.AdaptiveAvgPool2d((2, 3)), nn.AdaptiveMaxPool2d(4),
    nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
    nn.PixelShuffle(2), nn.ZeroPad2d((1, 2, 0, 1)),
]


def test_every_supported_torch_leaf_is_rebuilt_with_its_arguments():
    assert {type(m) for m in LEAF_SAMPLES} == set(codegen.LEAVES)
    namespace = {"nn": nn, "torch": torch}
    for module in LEAF_SAMPLES:
        source = codegen.SourceWriter().expr(module)
        rebuilt = eval(source, namespace)
        assert type(rebuilt) is type(module) and repr(rebuilt) == repr(module), source
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
            {k: v.shape for k, v in module.state_dict().items()}
        for name in codegen.LEAVES[type(module)]:   # repr leaves some out (AvgPool2d's)
            if name == "bias":
                assert (rebuilt.bias is None) == (module.bias is None), source
            else:
                assert getattr(rebuilt, name) == getattr(module, name), (source, name)


# -- robustness: blocks the generator has never seen

SCALE = 0.5


def _halve(x: torch.Tensor) -> torch.Tensor:
    return x * SCALE


class Scaled(nn.Module):
    """A block with a helper function, a module constant, a parameter and buffers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gain = nn.Parameter(torch.linspace(0.5, 2.0, 4))
        self.register_buffer("offset", torch.arange(4.0))
        self.register_buffer("table", torch.tensor([1.0, -1.0, 2.0, 0.5]), persistent=False)
        self.last = None

    def forward(self, x):
        y = _halve(self.conv(x)) * self.gain.view(1, -1, 1, 1) + self.offset.view(1, -1, 1, 1)
        self.last = y.detach()
        return y * self.table.view(1, -1, 1, 1)


class Head(nn.Sequential):
    def forward(self, x):
        return super().forward(x.mean(dim=(2, 3)))


def test_unseen_blocks_export_with_their_helpers(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(Scaled(), Head(nn.Linear(4, 3))).eval()
    model(torch.randn(1, 3, 8, 8))   # fills Scaled.last, an inspection-style cache
    path = export_py(model, tmp_path / "unseen.py", input_shape=(3, 8, 8))
    text = path.read_text(encoding="utf-8")
    assert "SCALE = 0.5" in text and "def _halve(" in text and "class Head(_Sequential)" in text
    mod = import_file(path, "unseen_export")
    twin = mod.build_model()
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(twin.eval()(x), model(x), atol=1e-6)
    assert mod.NUM_CLASSES == 3 and mod.MEAN is None and mod.SPEC is None


class UsesNumpy(nn.Module):
    def forward(self, x):
        return x * np.float32(2)


class BigTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.ones(5000), persistent=False)

    def forward(self, x):
        return x * self.table[0]


def test_export_refuses_what_torch_alone_cannot_express(tmp_path):
    with pytest.raises(ExportError, match="UsesNumpy.forward uses 'np'"):
        export_py(nn.Sequential(UsesNumpy(), nn.Flatten()), tmp_path / "a.py", input_shape=(1, 2, 2))
    with pytest.raises(ExportError, match="torch.nn.modules.activation.PReLU, which the "
                       "standalone export does not support yet"):
        export_py(nn.Sequential(nn.Flatten(), nn.PReLU()), tmp_path / "b.py", input_shape=(1, 2, 2))
    with pytest.raises(ExportError, match=r"the model fails on a \(2, 1, 2, 2\) input"):
        export_py(nn.Bilinear(4, 4, 2), tmp_path / "b.py", input_shape=(1, 2, 2))
    with pytest.raises(ExportError, match="5,000-element tensor that is not in the state_dict"):
        export_py(nn.Sequential(BigTable(), nn.Flatten()), tmp_path / "e.py", input_shape=(1, 2, 2))
    with pytest.raises(ExportError, match="no spec; pass input_shape"):
        export_py(nn.Linear(2, 2), tmp_path / "c.py")
    with pytest.raises(ExportError, match="one value per input channel"):
        export_py(blocks.build(TINY), tmp_path / "d.py", mean=(0.5,), std=(0.5,))
    assert not list(tmp_path.iterdir())   # nothing half-written


# -- the standalone file as a program: check, train, torchrun

@pytest.fixture()
def tiny(tmp_path):
    torch.manual_seed(0)
    model = randomize(blocks.build(TINY), seed=3)
    path = export_py(model, tmp_path / "tiny.py", mean=MEAN, std=STD, classes=list("abcd"))
    export_safetensors(model, tmp_path / "tiny.safetensors")
    return path, model


def test_standalone_check_and_synthetic_training_learn(tiny, capsys):
    path, model = tiny
    mod = import_file(path, "tiny_export_a")
    assert mod.main(["check", "--weights", str(path.with_suffix(".safetensors"))]) == 0
    assert "input (2, 3, 8, 8) -> output (2, 4); " in capsys.readouterr().out
    out = path.parent / "trained.safetensors"
    assert mod.main(["train", "--synthetic", "256", "--epochs", "3", "--batch-size", "32",
                     "--lr", "0.01", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 3 and "(256 images" in epochs[-1] and "(64 images)" in epochs[-1]
    test_acc = float(re.search(r"test loss \S+  acc (\S+)", epochs[-1]).group(1))
    assert test_acc > 0.9          # 4 classes: chance is 0.25
    trained = mod.load(out)       # strict load into a fresh build
    assert not torch.equal(trained.state_dict()["layers.3.weight"], model.state_dict()["layers.3.weight"])


def test_standalone_reads_npz_data_and_rejects_bad_labels(tiny, capsys):
    path, _ = tiny
    mod = import_file(path, "tiny_export_b")
    gen = np.random.default_rng(0)
    good = path.parent / "data.npz"
    np.savez(good, x=gen.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),   # (N, H, W, C)
             y=gen.integers(0, 4, 20))
    assert mod.main(["train", "--data", str(good), "--epochs", "1", "--batch-size", "8",
                     "--out", str(path.parent / "w.safetensors")]) == 0
    assert "(16 images" in capsys.readouterr().out    # 2 full batches of 8
    bad = path.parent / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 8, 8), np.uint8), y=np.array([0, 1, 2, 9]))
    assert mod.main(["train", "--data", str(bad), "--out", str(path.parent / "x.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: y holds labels outside 0..3"


def test_standalone_explains_a_missing_safetensors_package(tiny, capsys, monkeypatch):
    path, _ = tiny
    mod = import_file(path, "tiny_export_c")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert mod.main(["check", "--weights", str(path.with_suffix(".safetensors"))]) == 2
    assert "pip install safetensors" in capsys.readouterr().err


def test_standalone_trains_under_torchrun_with_two_processes(tiny):
    path, model = tiny
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         path.name, "train", "--synthetic", "64", "--epochs", "1", "--batch-size", "16",
         "--out", "out/trained.safetensors"],
        cwd=path.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == ("training on 64 images with 2 process(es) on cpu: "
                        "4 steps of 8 per process and epoch")
    epochs = [line for line in lines if line.startswith("epoch ")]
    # One line (rank 0 prints alone), counting both shards: the metrics were all-reduced.
    assert len(epochs) == 1 and "(64 images" in epochs[0] and "(16 images)" in epochs[0]
    assert sum(line.startswith("saved weights") for line in lines) == 1
    assert sorted(p.name for p in (path.parent / "out").iterdir()) == ["trained.safetensors"]
    trained = load_file(str(path.parent / "out" / "trained.safetensors"))
    fresh = import_file(path, "tiny_export_d").build_model().state_dict()
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in fresh.items()}
    assert not torch.equal(trained["layers.3.weight"], model.state_dict()["layers.3.weight"])


# -- ONNX, safetensors, spec, CSV

ONNX_SPEC = {
    "name": "ONNX mix", "input": [3, 16, 16], "classes": 6, "width": 0.25,
    "layers": [
        {"block": "coord_conv", "params": {"out": 32, "with_r": True}},
        {"block": "basic_residual", "params": {"out": 32, "attention": "cbam", "reduction": 4}},
        {"block": "ghost_bottleneck", "params": {"out": 24, "mid": 48, "stride": 2, "attention": "se"}},
        {"block": "lrn"},
        {"block": "inception", "params": {"c1": 16, "c2": [16, 32], "c3": [8, 16], "c4": 16}},
        {"block": "dense_block", "params": {"layers": 2}},
        {"block": "transition"},
        {"block": "transposed_conv", "params": {"out": 32}},
        {"block": "dropblock"},
        {"block": "avgpool", "params": {"kernel": 3, "stride": 2, "ceil_mode": True}},
        {"block": "hardswish"},
        {"block": "global_avg_pool"},
        {"block": "linear"},
    ]}


def test_onnx_matches_pytorch_in_onnxruntime_with_a_dynamic_batch(tmp_path):
    import onnx
    import onnxruntime as ort
    torch.manual_seed(0)
    model = randomize(blocks.build(ONNX_SPEC), seed=5).train()   # export must use eval mode
    path = export_onnx(model, tmp_path / "net.onnx")
    assert model.training and all(m.training for m in model.modules())   # flags restored
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 16, 16]
    model.eval()
    for n in (1, 5):
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (n, 6)
        assert np.allclose(got, want, atol=1e-4), np.abs(got - want).max()
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["convscope_spec"]) == model.spec


def test_safetensors_export_is_contiguous_exact_and_carries_the_spec(tmp_path):
    torch.manual_seed(0)
    model = randomize(blocks.build(SPECS["resnet_cbam"]), seed=1).to(memory_format=torch.channels_last)
    path = export_safetensors(model, tmp_path / "w.safetensors")
    loaded = load_file(str(path))
    assert set(loaded) == set(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["convscope_spec"]) == model.spec
    rebuilt = blocks.build(json.loads(safe_open(str(path), "pt").metadata()["convscope_spec"]))
    rebuilt.load_state_dict(loaded, strict=True)


def test_spec_export_rebuilds_the_same_network(tmp_path):
    model = blocks.build(SPECS["inception_dense"])
    path = export_spec(model.spec, tmp_path / "sub" / "spec.json")
    spec = json.loads(path.read_text(encoding="utf-8"))
    assert spec == model.spec
    assert {k: v.shape for k, v in blocks.build(spec).state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


EVENTS = [
    {"type": "start", "device": "cpu", "params": 123},
    {"type": "step", "step": 1, "epoch": 0.5, "loss": 2.3, "lr": 0.001, "images_per_sec": 900.0,
     "eta_s": 3.0, "progress": 0.25},
    {"type": "step", "step": 2, "epoch": 1.0, "loss": 2.1, "lr": 0.002, "images_per_sec": 950.0,
     "eta_s": 2.0, "progress": 0.5},
    {"type": "epoch", "epoch": 1, "train_loss": 2.2, "train_acc": 0.25, "test_loss": 2.0,
     "test_acc": 0.375, "images_per_sec": 925.5, "elapsed_s": 1.25, "lr": 0.002},
    {"type": "epoch", "epoch": 2, "train_loss": 1.5, "train_acc": 0.5, "test_loss": None,
     "test_acc": None, "images_per_sec": 1000.0, "elapsed_s": 2.5, "lr": 0.0, "note": "x"},
    {"type": "end", "status": "completed", "test_acc": 0.375},
]


def test_metrics_csv_has_one_row_per_epoch_and_optionally_per_step(tmp_path):
    path = export_metrics_csv(EVENTS, tmp_path / "m.csv")
    rows = list(csv.reader(path.open(encoding="utf-8")))
    assert rows[0] == list(EPOCH_COLUMNS) + ["note"]
    assert rows[1] == ["1", "2.2", "0.25", "2.0", "0.375", "0.002", "925.5", "1.25", ""]
    assert rows[2] == ["2", "1.5", "0.5", "", "", "0.0", "1000.0", "2.5", "x"]
    assert len(rows) == 3
    steps = list(csv.DictReader(export_metrics_csv(EVENTS, tmp_path / "s.csv", kind="step")
                                .open(encoding="utf-8")))
    assert list(steps[0]) == list(STEP_COLUMNS)
    assert [float(r["loss"]) for r in steps] == [2.3, 2.1]
    with pytest.raises(ValueError, match="kind must be"):
        export_metrics_csv(EVENTS, tmp_path / "x.csv", kind="end")


# -- runs and the CLI

@pytest.fixture()
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = randomize(blocks.build(TINY), seed=4)
    info = {"name": "toy", "classes": ["w", "x", "y", "z"], "mean": list(MEAN), "std": list(STD)}
    return save_run(RunParts(spec=model.spec, settings={"epochs": 2}, metrics=EVENTS, model=model,
                             dataset_info=info), tmp_path / "runs"), model


def test_cli_exports_a_run_as_a_standalone_file(run_dir, tmp_path, capsys):
    run, model = run_dir
    out = tmp_path / "exports"
    out.mkdir()
    assert cli_main(["export", "--run", str(run), "--format", "py", "--out", str(out)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == out / "tiny_bn_net.py"
    mod = import_file(path, "tiny_bn_net_export")
    assert (mod.MEAN, mod.STD, mod.CLASSES) == (MEAN, STD, ["w", "x", "y", "z"])
    loaded = mod.load(run / "weights.safetensors")
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        want = model((x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1))
                     / torch.tensor(STD).view(1, 3, 1, 1)).softmax(1)
    assert torch.allclose(mod.predict(loaded, x), want, atol=1e-6)


def test_export_run_writes_spec_csv_and_weights(run_dir, tmp_path):
    run, model = run_dir
    spec_path = export_run(run, "spec", tmp_path / "net.json")
    assert json.loads(spec_path.read_text(encoding="utf-8")) == model.spec
    csv_path = export_run(run, "csv", str(tmp_path) + os.sep)
    assert csv_path.name == "tiny_bn_net_metrics.csv"
    assert len(list(csv.reader(csv_path.open(encoding="utf-8")))) == 3   # header + 2 epochs
    weights = load_file(str(export_run(run, "safetensors", tmp_path / "w.safetensors")))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="format must be one of py, onnx, safetensors, spec, csv"):
        export_run(run, "pdf", tmp_path)


def test_cli_export_reports_user_mistakes_in_one_line(tmp_path, capsys):
    assert cli_main(["export", "--run", str(tmp_path / "nope"), "--format", "spec"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a run folder" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        cli_main(["export", "--run", str(tmp_path), "--format", "pdf"])
    assert e.value.code == 2
