"""The network diagram (visual/diagram.py, blocks/graph.py) and `python -m lab diagram`."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

import blocks
import presets
from blocks.graph import block_graph
from lab.cli import main
from visual.diagram import diagram, diagram_svg

pytestmark = pytest.mark.usefixtures("one_thread")


def _groups(svg: str, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [g for g in root.iter("{http://www.w3.org/2000/svg}g") if cls in g.get("class", "").split()]


def _leaves(module) -> int:
    return sum(1 for m in module.modules() if next(m.children(), None) is None)


@pytest.mark.parametrize("name", presets.list_presets())
def test_one_node_per_layer_and_expanded_nodes_are_the_leaf_modules_plus_merges(name):
    spec = presets.load_preset(name)
    svg = diagram_svg(spec)
    assert [int(g.get("data-layer")) for g in _groups(svg, "cs-layer")] == list(range(len(spec["layers"])))
    assert not _groups(svg, "cs-node")
    svg = diagram_svg(spec, "all")
    net = blocks.build(spec, device="meta")
    nodes = _groups(svg, "cs-node")
    for i, layer in enumerate(net.layers):
        inner = [g for g in nodes if g.get("data-layer") == str(i)
                 and g.get("data-node") not in ("input", "output")]
        merges = [g for g in inner if g.find("{http://www.w3.org/2000/svg}circle") is not None]
        assert len(inner) - len(merges) == _leaves(layer), (i, spec["layers"][i])


@pytest.mark.parametrize("layer, merges", [
    ({"block": "basic_residual"}, {"add": 1}),
    ({"block": "basic_residual", "params": {"attention": "se"}}, {"add": 1, "mul": 1}),
    # CBAM: the shared MLP's avg + max, the channel gate's multiply, the [mean; max] concat,
    # the spatial gate's multiply, the residual addition
    ({"block": "basic_residual", "params": {"attention": "cbam"}}, {"add": 2, "mul": 2, "cat": 1}),
    ({"block": "inception"}, {"cat": 1}),
    ({"block": "dense_block", "params": {"layers": 3}}, {"cat": 3}),
    ({"block": "ghost_module"}, {"cat": 1}),
    ({"block": "coord_conv"}, {}),   # the coordinates are concatenated inside AddCoords (a leaf)
    ({"block": "inverted_residual", "params": {"out": 16, "expand": 2}}, {"add": 1}),
    ({"block": "dropblock"}, {}),
])
def test_merge_nodes_of_composite_blocks(layer, merges):
    spec = {"input": [16, 16, 16], "classes": 2,
            "layers": [layer, {"block": "global_avg_pool"}, {"block": "linear"}]}
    net = blocks.build(spec, device="meta")
    g = block_graph(net.layers[0], (16, 16, 16))
    found: dict[str, int] = {}
    for n in g.nodes:
        if n.kind == "merge":
            found[n.op] = found.get(n.op, 0) + 1
    assert found == merges
    assert sum(1 for n in g.nodes if n.kind == "module") == _leaves(net.layers[0])


def test_stride_2_residual_shows_its_shortcut_conv():
    d = diagram(presets.load_preset("ResNet-18"), [3])
    g = d.layers[3].graph
    short = g.node("0.shortcut.0")
    assert short.label == "Conv2d 1×1 /2" and short.shape == (128, 28, 28)
    edges = {(e.src, e.dst) for e in g.edges}
    assert ("input", "0.shortcut.0") in edges and ("0.shortcut.1", "add") in edges
    assert ("input", "0.conv1.conv") in edges and ("0.conv2.bn", "add") in edges
    # the second repeat has an identity shortcut: the first block's output goes straight to its add
    assert "1.shortcut.0" not in {n.id for n in g.nodes}
    assert ("0.act", "add_1") in edges
    svg = diagram_svg(presets.load_preset("ResNet-18"), [3])
    assert "Conv2d 1×1 /2" in svg


def test_layer_boxes_carry_shape_params_flops_and_receptive_field():
    svg = diagram_svg(presets.load_preset("ResNet-18"))
    layer5 = _groups(svg, "cs-layer")[5]
    text = " ".join(t.text or "" for t in layer5.iter("{http://www.w3.org/2000/svg}text"))
    assert "512×7×7" in text and "RF 435 (j32)" in text and "params" in text and "FLOPs" in text
    assert layer5.get("data-kind") == "conv"
    kinds = {g.get("data-layer"): g.get("data-kind") for g in _groups(diagram_svg(
        presets.load_preset("GhostNet")), "cs-layer")}
    assert kinds["1"] == "ghost" and kinds["0"] == "conv" and kinds[str(len(kinds) - 1)] == "head"


def test_invalid_layer_is_drawn_red_with_its_error():
    spec = presets.load_preset("LeNet-5")
    spec["layers"].insert(4, {"block": "conv", "params": {"kernel": 9, "padding": 0}})
    d = diagram(spec, "all")
    assert d.error.startswith("layer 4 (conv)")
    bad = d.layers[4]
    assert bad.kind == "error" and "kernel 9" in bad.error and bad.row is None
    assert d.layers[3].row.out_shape == (16, 5, 5)        # layers before it keep their figures
    assert d.layers[5].row is None and d.layers[5].kind != "error"
    svg = diagram_svg(spec, "all")
    red = [g for g in _groups(svg, "cs-layer") if g.get("data-kind") == "error"]
    assert len(red) == 1 and "#d33c3c" in ET.tostring(red[0], encoding="unicode")


def test_selected_layer_is_highlighted():
    svg = diagram_svg(presets.load_preset("ResNet-18"), selected=2)
    sel = [g.get("data-layer") for g in _groups(svg, "cs-selected")]
    assert sel == ["2"]


def test_cli_writes_svg_and_html(tmp_path, capsys):
    out = tmp_path / "d.svg"
    assert main(["diagram", "--preset", "ResNet-18 + CBAM", "--input", "3x32x32", "--expand", "1",
                 "--out", str(out)]) == 0
    svg = out.read_text()
    assert len(_groups(svg, "cs-layer")) == 7
    assert {g.get("data-layer") for g in _groups(svg, "cs-node")} == {"1"}
    html_out = tmp_path / "d.html"
    assert main(["diagram", "--preset", "lenet5", "--expand", "all", "--out", str(html_out)]) == 0
    assert html_out.read_text().startswith("<!doctype html>") and "<svg" in html_out.read_text()
    assert main(["diagram", "--preset", "lenet5", "--out", str(tmp_path / "d.png")]) == 2
    assert "--out must end in .svg or .html" in capsys.readouterr().err
    assert main(["diagram", "--preset", "lenet5", "--expand", "12", "--out", str(out)]) == 2
    assert main(["diagram", "--preset", "lenet5", "--expand", "some", "--out", str(out)]) == 2


def test_app_handlers_expand_select_and_download(tmp_path, monkeypatch):
    import gradio as gr

    from ui import diagram as ui_diagram
    spec = presets.load_preset("ResNet-18 + CBAM", (3, 32, 32), width=0.25)
    expanded, markup = ui_diagram.on_toggle_expand(spec, 1, [])
    assert expanded == [1] and "data-node='0.attn.spatial.conv'" in markup
    assert "cs-layer cs-selected' data-layer='1'" in markup
    expanded, markup = ui_diagram.on_toggle_expand(spec, 1, expanded)
    assert expanded == [] and "cs-node" not in markup
    out = ui_diagram.on_diagram_click(spec, [1], gr.EventData(None, {"layer": 4, "node": ""}))
    assert out[0]["value"] == 4 and "basic_residual" in out[1]["value"]
    out = ui_diagram.on_diagram_click(spec, [], gr.EventData(None, {"layer": 99}))
    assert all(u == gr.update() for u in out)
    assert "empty" in ui_diagram.diagram_markup({"layers": []})
    bad = dict(spec, layers=spec["layers"] + [{"block": "conv"}])
    assert "data-kind='error'" in ui_diagram.diagram_markup(bad, 0, [0])


def test_app_receptive_field_views_and_svg_download(app_env):
    import plotly.graph_objects as go

    from lab.serve.session import Session
    from ui import diagram as ui_diagram
    assert isinstance(ui_diagram.on_gridding_demo(), go.Figure)
    spec = {"name": "tiny", "input": [3, 16, 16], "classes": 2,
            "layers": [{"block": "conv", "params": {"out": 4}}, {"block": "conv", "params": {"out": 4}},
                       {"block": "global_avg_pool"}, {"block": "linear"}]}
    s = Session(key="diagram-test")
    try:
        fig = ui_diagram.on_erf(spec, 1, s)
        assert isinstance(fig, go.Figure) and len(fig.layout.shapes) == 1   # the theoretical square
        s2, file_update = ui_diagram.on_download_svg(spec, 0, [1], s)
        path = file_update["value"]
        assert s2 is s and path.endswith("tiny-diagram.svg")
        svg = open(path, encoding="utf-8").read()
        assert len(_groups(svg, "cs-layer")) == 4 and _groups(svg, "cs-node")
    finally:
        s.close()


def test_tracing_leaves_other_threads_forwards_alone():
    """fx patches nn.Module.__call__ for every thread while it traces; a visitor's training in
    another thread must run as usual meanwhile (it raised "module is not installed as a
    submodule" before), and the patch must be gone afterwards."""
    import threading

    import torch
    import torch.nn as nn

    from blocks.graph import fx_trace

    started, done = threading.Event(), threading.Event()

    class Handshake(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            started.set()           # fx's patches are in place now
            done.wait(30)
            return self.conv(x)

    torch.manual_seed(0)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = other(x)
    result = {}

    def foreign():
        started.wait(30)
        try:
            with torch.no_grad():
                result["out"] = other(x)
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            result["error"] = repr(e)
        done.set()

    t = threading.Thread(target=foreign)
    t.start()
    call_before = nn.Module.__call__
    graph = fx_trace(Handshake())
    t.join(30)
    assert "error" not in result, result.get("error")
    assert torch.equal(result["out"], expected)
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["conv"]
    assert nn.Module.__call__ is call_before
