"""The network spec and its builder: shape threading, width, repeats, the round trip,
the budget, the JSON loader and every error a user can make (each naming layer and block)."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn as nn

from blocks import SpecError, build, load_spec_text, normalize_spec, to_spec
from blocks.builder import MAX_LAYERS, MAX_MODULES

HEAD = [{"block": "global_avg_pool"}, {"block": "linear"}]


def spec(*layers, **top) -> dict:
    return {"input": [3, 32, 32], **top, "layers": list(layers)}


def error(s) -> SpecError:
    with pytest.raises(SpecError) as info:
        build(s, "meta")
    return info.value


# ------------------------------------------------------------------ shapes and defaults

def test_shapes_are_threaded_through_the_stack():
    net = build(spec({"block": "conv", "params": {"out": 16}},
                     {"block": "maxpool"},
                     {"block": "depthwise_separable", "params": {"out": 24, "stride": 2}},
                     {"block": "se"},
                     {"block": "flatten"},
                     {"block": "linear", "params": {"out": 50}},
                     {"block": "relu"},
                     {"block": "linear"}))
    assert [i.in_shape for i in net.layer_info] == [
        (3, 32, 32), (16, 32, 32), (16, 16, 16), (24, 8, 8), (24, 8, 8), (1536,), (50,), (50,)]
    assert [i.out_shape for i in net.layer_info][-1] == (10,)
    # nobody wrote an input channel count or an in_features
    assert net.layers[0].conv.in_channels == 3
    assert net.layers[2].depthwise.conv.in_channels == 16
    assert net.layers[2].pointwise.conv.out_channels == 24
    assert net.layers[5].in_features == 24 * 8 * 8
    assert net.layers[7].in_features == 50
    assert [i.name for i in net.layer_info] == [f"layers.{k}" for k in range(8)]
    assert [i.block for i in net.layer_info] == ["conv", "maxpool", "depthwise_separable", "se",
                                                 "flatten", "linear", "relu", "linear"]
    y = net(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)


def test_final_linear_without_out_maps_to_classes():
    net = build(spec({"block": "conv", "params": {"out": 8}}, *HEAD, classes=7))
    assert net.layers[-1].out_features == 7
    assert net.layer_info[-1].out_shape == (7,)
    assert net.layer_info[-1].params["out"] is None       # stored as written: derived
    # a linear on a feature map flattens it first
    net = build(spec({"block": "conv", "params": {"out": 4}}, {"block": "linear"}, classes=3))
    assert net.layers[1][1].in_features == 4 * 32 * 32
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_output_size_must_equal_classes():
    e = error(spec({"block": "conv", "params": {"out": 4}}, {"block": "global_avg_pool"},
                   {"block": "linear", "params": {"out": 100}}, classes=10))
    assert str(e) == ("layer 2 (linear): the network ends with 100 outputs but there are 10 classes; "
                      "leave the last linear's 'out' empty so it follows the classes")


def test_width_scales_channels_not_classes():
    net = build(spec({"block": "conv", "params": {"out": 64}},
                     {"block": "inception", "params": {"c1": 8, "c2": [16, 32], "c3": [4, 8], "c4": 8}},
                     {"block": "dense_block", "params": {"layers": 2, "growth": 32}},
                     {"block": "global_avg_pool"},
                     {"block": "linear", "params": {"out": 100}},
                     {"block": "linear"}, width=0.25, classes=10))
    assert net.layers[0].conv.out_channels == 16
    assert net.layer_info[1].out_shape == (2 + 8 + 2 + 2, 32, 32)   # 8·¼, 32·¼, 8·¼, 8·¼
    assert net.layer_info[2].out_shape == (14 + 2 * 8, 32, 32)      # growth 32·¼
    assert net.layers[4].out_features == 25
    assert net.layers[5].out_features == 10                          # classes are not scaled
    assert net.layer_info[0].params["out"] == 64                    # the spec keeps the written value
    # never below one channel; rounding to the nearest
    net = build(spec({"block": "conv", "params": {"out": 3}}, *HEAD, width=0.1))
    assert net.layers[0].conv.out_channels == 1
    net = build(spec({"block": "conv", "params": {"out": 10}}, *HEAD, width=1.5))
    assert net.layers[0].conv.out_channels == 15


def test_stride_applies_to_the_first_repeat_only():
    net = build(spec({"block": "conv", "params": {"out": 16}},
                     {"block": "basic_residual", "params": {"out": 32, "stride": 2}, "repeat": 3},
                     *HEAD))
    stage = net.layers[1]
    assert isinstance(stage, nn.Sequential) and len(stage) == 3
    assert [b.conv1.conv.stride for b in stage] == [(2, 2), (1, 1), (1, 1)]
    assert stage[0].shortcut is not None and stage[1].shortcut is None
    assert net.layer_info[1].out_shape == (32, 16, 16)
    assert net.layer_info[1].repeat == 3
    # a plain conv repeated with stride 2 halves the size once, not three times
    net = build(spec({"block": "conv", "params": {"out": 8, "stride": 2}, "repeat": 3}, *HEAD))
    assert net.layer_info[0].out_shape == (8, 16, 16)


def test_repeat_builds_independent_modules():
    net = build(spec({"block": "conv", "params": {"out": 8}, "repeat": 2}, *HEAD))
    a, b = net.layers[0]
    assert a.conv.weight.data_ptr() != b.conv.weight.data_ptr()
    assert b.conv.in_channels == 8


def test_defaults_are_filled_and_spec_kept():
    net = build({"layers": [{"block": "conv"}, *HEAD]})
    s = to_spec(net)
    assert s["input"] == [3, 32, 32] and s["classes"] == 10 and s["width"] == 1.0
    assert s["name"] == "network"
    assert s["layers"][0] == {"block": "conv", "repeat": 1, "params": {
        "out": 64, "kernel": 3, "stride": 1, "padding": None, "dilation": 1, "groups": 1,
        "norm": "batch", "act": "relu", "bias": None}}
    assert net.input_shape == (3, 32, 32)
    # to_spec hands out a copy
    s["layers"][0]["params"]["out"] = 1
    assert net.spec["layers"][0]["params"]["out"] == 64


def test_strings_are_case_insensitive_and_floats_accept_integers():
    s = normalize_spec(spec({"block": "conv", "params": {"act": "ReLU6", "norm": "None"}},
                            {"block": "dropout", "params": {"p": 0}}, *HEAD))
    assert s["layers"][0]["params"]["act"] == "relu6"
    assert s["layers"][0]["params"]["norm"] == "none"
    assert s["layers"][1]["params"]["p"] == 0.0
    s = normalize_spec(spec({"block": "conv", "params": {"kernel": 5.0}}, *HEAD))
    assert s["layers"][0]["params"]["kernel"] == 5 and isinstance(s["layers"][0]["params"]["kernel"], int)


def test_meta_build_allocates_nothing_and_stays_in_training_mode():
    net = build(spec({"block": "conv", "params": {"out": 512}},
                     {"block": "basic_residual", "params": {"out": 512, "attention": "cbam"}},
                     *HEAD), "meta")
    assert all(p.is_meta for p in net.parameters())
    assert all(m.training for m in net.modules())
    net = build(spec({"block": "conv"}, *HEAD), "cpu")
    assert all(m.training for m in net.modules())
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_shape_inference_shortcuts_keep_their_checks():
    """The builder skips PyTorch's slow meta kernels for obvious shapes; mismatches must
    still raise, and the shortcut results must equal PyTorch's own."""
    from blocks.builder import _ShapeOnly
    x = torch.empty(2, 3, 8, 8, device="meta")
    with torch.device("meta"):
        bn, lin = nn.BatchNorm2d(4), nn.Linear(5, 2)
    with torch.no_grad(), _ShapeOnly():
        with pytest.raises(RuntimeError):
            bn(x)
        with pytest.raises(RuntimeError):
            lin(torch.empty(2, 4, device="meta"))
        with pytest.raises(RuntimeError):
            x * torch.empty(2, 4, 1, 1, device="meta")
        with pytest.raises((IndexError, RuntimeError)):
            x.mean(dim=(2, 4))
        fast = [tuple(t.shape) for t in (
            x.mean(dim=(2, 3)), x.amax(dim=1, keepdim=True), x.mean(-1), x * 2.0,
            x + torch.empty(3, 1, 1, device="meta"), torch.relu(x), torch.sigmoid(x),
            lin(torch.empty(7, 5, device="meta")))]
    slow = [tuple(t.shape) for t in (
        x.mean(dim=(2, 3)), x.amax(dim=1, keepdim=True), x.mean(-1), x * 2.0,
        x + torch.empty(3, 1, 1, device="meta"), torch.relu(x), torch.sigmoid(x),
        lin(torch.empty(7, 5, device="meta")))]
    assert fast == slow == [(2, 3), (2, 1, 8, 8), (2, 3, 8), (2, 3, 8, 8), (2, 3, 8, 8),
                            (2, 3, 8, 8), (2, 3, 8, 8), (7, 2)]


ROUND_TRIP = [
    spec({"block": "conv", "params": {"out": 64, "kernel": 3}},
         {"block": "basic_residual", "params": {"out": 64, "attention": "cbam"}, "repeat": 2},
         {"block": "basic_residual", "params": {"out": 128, "stride": 2, "attention": "cbam"}, "repeat": 2},
         *HEAD, name="ResNet-18 + CBAM", width=0.25),
    spec({"block": "conv", "params": {"out": 16, "stride": 2, "act": "hardswish"}},
         {"block": "ghost_bottleneck", "params": {"out": 16, "mid": 16, "attention": "se"}},
         {"block": "ghost_bottleneck", "params": {"out": 24, "mid": 48, "stride": 2}},
         {"block": "inverted_residual", "params": {"out": 24, "attention": "se"}, "repeat": 2},
         {"block": "dropblock", "params": {"p": 0.1}},
         {"block": "global_avg_pool"}, {"block": "dropout", "params": {"p": 0.2}},
         {"block": "linear"}, classes=100),
    spec({"block": "coord_conv", "params": {"out": 16, "with_r": True}},
         {"block": "dense_block", "params": {"layers": 3, "growth": 8}},
         {"block": "transition"},
         {"block": "inception", "params": {"c1": 8, "c2": [8, 16], "c3": [4, 8], "c4": 8}},
         {"block": "transposed_conv", "params": {"out": 8}},
         {"block": "lrn"}, {"block": "maxpool", "params": {"kernel": 3, "stride": 2, "padding": 1}},
         {"block": "flatten"}, {"block": "batchnorm"}, {"block": "linear"}),
    {"input": [1, 28, 28], "classes": 10, "layers": [
        {"block": "vgg_block", "params": {"out": 8, "convs": 2}},
        {"block": "nin_block", "params": {"out": 16, "kernel": 3, "padding": 1}},
        {"block": "grouped_conv", "params": {"out": 16, "groups": 4}},
        {"block": "dilated_conv", "params": {"out": 8, "dilation": 2}},
        {"block": "bottleneck_residual", "params": {"out": 32, "groups": 2, "stride": 2}},
        {"block": "avgpool"}, {"block": "flatten"}, {"block": "linear", "params": {"out": 32}},
        {"block": "swish"}, {"block": "linear"}]},
]


@pytest.mark.parametrize("s", ROUND_TRIP, ids=["resnet-cbam", "ghost-mobile", "mixed", "vgg-nin"])
def test_build_to_spec_build_is_the_identity(s):
    first = build(s)
    again = build(to_spec(first))
    shapes = {k: tuple(v.shape) for k, v in first.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in again.state_dict().items()}
    assert sum(p.numel() for p in first.parameters()) == sum(p.numel() for p in again.parameters())
    assert to_spec(again) == to_spec(first)
    assert json.loads(json.dumps(to_spec(first))) == to_spec(first)     # plain JSON
    assert [i.out_shape for i in again.layer_info] == [i.out_shape for i in first.layer_info]
    # the same weights give the same outputs in both
    again.load_state_dict(first.state_dict())
    first.eval(), again.eval()
    x = torch.randn(2, *first.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(first(x), again(x))
    assert first(x).shape == (2, s.get("classes", 10))


def test_round_trip_through_json_text():
    s = ROUND_TRIP[0]
    text = json.dumps(to_spec(build(s, "meta")), indent=2)
    assert to_spec(build(load_spec_text(text), "meta")) == to_spec(build(s, "meta"))


# ------------------------------------------------------------------ errors naming layer and block

LAYER_ERRORS = [
    ("unknown block",
     spec({"block": "conv"}, {"block": "convv"}, *HEAD),
     "layer 1: unknown block 'convv'; `python -m lab blocks` lists them"),
    ("unknown parameter",
     spec({"block": "conv", "params": {"kernal": 3}}, *HEAD),
     "layer 0 (conv): unknown parameter 'kernal'; allowed: act, bias, dilation, groups, kernel, "
     "norm, out, padding, stride"),
    ("parameter of a block without any",
     spec({"block": "conv"}, {"block": "relu", "params": {"inplace": True}}, *HEAD),
     "layer 1 (relu): unknown parameter 'inplace'; it takes no parameters"),
    ("wrong type: string for int",
     spec({"block": "conv", "params": {"kernel": "3"}}, *HEAD),
     "layer 0 (conv): 'kernel' must be an integer, got '3'"),
    ("wrong type: bool for int",
     spec({"block": "conv", "params": {"out": True}}, *HEAD),
     "layer 0 (conv): 'out' must be an integer, got True"),
    ("wrong type: fraction for int",
     spec({"block": "conv", "params": {"out": 2.5}}, *HEAD),
     "layer 0 (conv): 'out' must be an integer, got 2.5"),
    ("wrong type: int for bool",
     spec({"block": "coord_conv", "params": {"with_r": 1}}, *HEAD),
     "layer 0 (coord_conv): 'with_r' must be true or false, got 1"),
    ("wrong type: list for str",
     spec({"block": "conv", "params": {"act": ["relu"]}}, *HEAD),
     "layer 0 (conv): 'act' must be a string, got ['relu']"),
    ("unknown choice",
     spec({"block": "conv", "params": {"act": "gelu"}}, *HEAD),
     "layer 0 (conv): 'act' must be one of relu, relu6, swish, silu, hardswish, sigmoid, "
     "hardsigmoid, tanh, none, got 'gelu'"),
    ("zero channels",
     spec({"block": "conv", "params": {"out": 0}}, *HEAD),
     "layer 0 (conv): 'out' must be at least 1, got 0"),
    ("negative channels",
     spec({"block": "conv"}, {"block": "pointwise_conv", "params": {"out": -5}}, *HEAD),
     "layer 1 (pointwise_conv): 'out' must be at least 1, got -5"),
    ("huge channels",
     spec({"block": "conv", "params": {"out": 10 ** 12}}, *HEAD),
     "layer 0 (conv): 'out' must be at most 8192, got 1000000000000"),
    ("channels beyond any float",
     spec({"block": "conv", "params": {"out": 10 ** 400}}, *HEAD),
     "layer 0 (conv): 'out' must be at most 8192, got an integer of about 401 digits"),
    ("float param beyond any float",
     spec({"block": "conv"}, *HEAD[:1], {"block": "dropout", "params": {"p": 10 ** 400}}, HEAD[1]),
     "layer 2 (dropout): 'p' must be at most 0.99, got an integer of about 401 digits"),
    ("negative channel in a list",
     spec({"block": "inception", "params": {"c2": [96, -1]}}, *HEAD),
     "layer 0 (inception): 'c2' must be at least 1, got -1"),
    ("NaN",
     spec({"block": "conv"}, *HEAD[:1], {"block": "dropout", "params": {"p": math.nan}}, HEAD[1]),
     "layer 2 (dropout): 'p' must be a finite number, got nan"),
    ("infinity",
     spec({"block": "dense_block"}, {"block": "transition", "params": {"compression": math.inf}}, *HEAD),
     "layer 1 (transition): 'compression' must be a finite number, got inf"),
    ("float out of range",
     spec({"block": "dropblock", "params": {"p": 1.5}}, *HEAD),
     "layer 0 (dropblock): 'p' must be at most 0.99, got 1.5"),
    ("kernel larger than the input",
     spec({"block": "conv", "params": {"out": 8}}, *[{"block": "maxpool"}] * 5, {"block": "relu"},
          {"block": "maxpool", "params": {"kernel": 3}}, *HEAD),
     "layer 7 (maxpool): input is 1×1 but kernel 3 needs at least 3×3"),
    ("dilated kernel larger than the input",
     spec({"block": "dilated_conv", "params": {"kernel": 5, "dilation": 10, "padding": 0}}, *HEAD),
     "layer 0 (dilated_conv): input is 32×32 but kernel 5 (dilation 10) needs at least 41×41"),
    ("kernel larger than the padded input",
     spec({"block": "conv", "params": {"kernel": 40, "padding": 2}}, *HEAD),
     "layer 0 (conv): input is 32×32 but kernel 40 with padding 2 needs at least 36×36"),
    ("pool on a single pixel",
     {"input": [3, 1, 1], "layers": [{"block": "vgg_block"}, *HEAD]},
     "layer 0 (vgg_block): input is 1×1 but its 2×2 pool, kernel 2 needs at least 2×2"),
    ("groups not dividing channels",
     spec({"block": "conv", "params": {"groups": 4}}, *HEAD),
     "layer 0 (conv): groups=4 must divide both input channels (3) and output channels (64)"),
    ("groups not dividing the bottleneck",
     spec({"block": "conv"}, {"block": "bottleneck_residual", "params": {"groups": 3}}, *HEAD),
     "layer 1 (bottleneck_residual): groups=3 must divide the bottleneck channels (64)"),
    ("feature-map block after flatten",
     spec({"block": "conv", "params": {"out": 8}}, {"block": "flatten"}, {"block": "conv"}, *HEAD),
     "layer 2 (conv): needs a feature map (C×H×W) but receives flat features of size 8192; "
     "move it before the flatten/pooling that precedes it"),
    ("attention after global pooling",
     spec({"block": "conv"}, {"block": "global_avg_pool"}, {"block": "se"}, {"block": "linear"}),
     "layer 2 (se): needs a feature map (C×H×W) but receives flat features of size 64; "
     "move it before the flatten/pooling that precedes it"),
    ("network ending without pooling or linear",
     spec({"block": "conv"}),
     "layer 0 (conv): the network ends with a 64×32×32 feature map; end it with global_avg_pool "
     "(or flatten) and linear"),
    ("network ending on attention",
     spec({"block": "conv", "params": {"out": 8}}, {"block": "relu"}, {"block": "cbam"}),
     "layer 2 (cbam): the network ends with a 8×32×32 feature map; end it with global_avg_pool "
     "(or flatten) and linear"),
    ("ten thousand layers",
     spec(*[{"block": "relu"}] * 10_000),
     "layer 1000 (relu): the spec has 10000 layers; at most 1000 are allowed"),
    ("repeats beyond the layer limit",
     spec(*[{"block": "relu", "repeat": 100}] * 11, *HEAD),
     "layer 10 (relu): repeats bring the network to 1102 layers; at most 1000 are allowed"),
    ("repeat zero",
     spec({"block": "conv", "repeat": 0}, *HEAD),
     "layer 0 (conv): 'repeat' must be an integer from 1 to 100, got 0"),
    ("repeat too large",
     spec({"block": "conv"}, {"block": "se", "repeat": 101}, *HEAD),
     "layer 1 (se): 'repeat' must be an integer from 1 to 100, got 101"),
    ("repeat as text",
     spec({"block": "conv", "repeat": "2"}, *HEAD),
     "layer 0 (conv): 'repeat' must be an integer from 1 to 100, got '2'"),
    ("repeat as bool",
     spec({"block": "conv", "repeat": True}, *HEAD),
     "layer 0 (conv): 'repeat' must be an integer from 1 to 100, got True"),
    ("layer not an object",
     spec({"block": "conv"}, "relu", *HEAD),
     "layer 1: a layer must be an object like {\"block\": \"conv\"}, got 'relu'"),
    ("layer without a block",
     spec({"params": {"out": 3}}, *HEAD),
     "layer 0: missing 'block' name"),
    ("block name not a string",
     spec({"block": 7}, *HEAD),
     "layer 0: missing 'block' name"),
    ("params not an object",
     spec({"block": "conv", "params": [64, 3]}, *HEAD),
     "layer 0 (conv): 'params' must be an object"),
    ("params as false",
     spec({"block": "conv", "params": False}, *HEAD),
     "layer 0 (conv): 'params' must be an object"),
    ("unknown layer key",
     spec({"block": "conv", "repaet": 2}, *HEAD),
     "layer 0 (conv): unknown layer key(s) 'repaet'; allowed: block, params, repeat"),
    ("transposed output padding",
     spec({"block": "transposed_conv", "params": {"output_padding": 2}}, *HEAD),
     "layer 0 (transposed_conv): output_padding (2) must be smaller than stride (2)"),
    ("transposed conv padded to nothing",
     {"input": [3, 1, 1], "layers": [{"block": "transposed_conv", "params": {"padding": 5}}, *HEAD]},
     "layer 0 (transposed_conv): input is 1×1 but kernel 2, stride 2 and padding 5 give an "
     "empty output; lower the padding"),
    ("even CBAM kernel",
     spec({"block": "conv"}, {"block": "cbam", "params": {"kernel": 4}}, *HEAD),
     "layer 1 (cbam): 'kernel' must be odd so the map keeps its size, got 4"),
    ("even ghost cheap kernel",
     spec({"block": "ghost_module", "params": {"dw_kernel": 4}}, *HEAD),
     "layer 0 (ghost_module): 'dw_kernel' must be odd, got 4"),
    ("even inverted residual kernel",
     spec({"block": "inverted_residual", "params": {"kernel": 2}}, *HEAD),
     "layer 0 (inverted_residual): 'kernel' must be odd, got 2"),
    ("DropBlock larger than the map",
     spec({"block": "maxpool", "params": {"kernel": 16}}, {"block": "dropblock"}, *HEAD),
     "layer 1 (dropblock): block_size 3 exceeds the 2×2 input"),
    ("even DropBlock",
     spec({"block": "dropblock", "params": {"block_size": 4}}, *HEAD),
     "layer 0 (dropblock): 'block_size' must be odd (torchvision centres each block), got 4"),
    ("inception pairs",
     spec({"block": "inception", "params": {"c3": [16, 32, 64]}}, *HEAD),
     "layer 0 (inception): 'c2' and 'c3' are [reduce, out] pairs of two channel counts"),
    ("pool padding",
     spec({"block": "maxpool", "params": {"padding": 2}}, *HEAD),
     "layer 0 (maxpool): padding 2 must be at most half the kernel (1)"),
    ("linear on a huge map",
     {"input": [64, 2048, 2048], "layers": [{"block": "linear"}]},
     "layer 0 (linear): receives 268,435,456 features; pool or stride first (at most 16,777,216)"),
    ("too many parameters",
     {"input": [64, 64, 64], "layers": [{"block": "conv", "params": {"out": 8192, "kernel": 31}},
                                        *HEAD]},
     "layer 0 (conv): the network reaches 503.9 M parameters here; at most 500.0 M are allowed "
     "(lower the channels or width)"),
    ("too many modules",
     # 3 (conv, bn, relu) + 2 × 128 dense layers of 6 (bn, relu, conv, bn, relu, conv)
     spec({"block": "conv", "params": {"out": 8}}, *[{"block": "dense_block", "params": {
         "layers": 128, "growth": 1}, "repeat": 3}], *HEAD),
     f"layer 1 (dense_block): the network reaches 1,539 modules here; at most {MAX_MODULES:,} "
     f"are allowed (fewer repeats or dense layers)"),
    ("too many modules across layers",
     # 3 + 900 + 1 + 97 leaves in 1 + 900 + 1 + 97 + 1 = 1,000 layers
     spec({"block": "conv", "params": {"out": 8}}, *[{"block": "relu", "repeat": 100}] * 9,
          {"block": "global_avg_pool"}, {"block": "batchnorm", "repeat": 97}, {"block": "linear"}),
     f"layer 11 (batchnorm): the network reaches 1,001 modules here; at most {MAX_MODULES:,} "
     f"are allowed (fewer repeats or dense layers)"),
]


@pytest.mark.parametrize("s,message", [c[1:] for c in LAYER_ERRORS], ids=[c[0] for c in LAYER_ERRORS])
def test_layer_errors_name_layer_block_and_problem(s, message):
    e = error(s)
    assert str(e) == message
    assert e.layer is not None and str(e).startswith(f"layer {e.layer}")
    if e.block is not None:
        assert str(e).startswith(f"layer {e.layer} ({e.block}): ")
    # normalize_spec (used by the editors) agrees on everything it checks
    try:
        normalize_spec(s)
    except SpecError as n:
        assert str(n) == message


TOP_ERRORS = [
    ("spec is a list", [{"block": "conv"}], "a spec must be a JSON object, got list"),
    ("spec is text", "conv", "a spec must be a JSON object, got str"),
    ("spec is None", None, "a spec must be a JSON object, got NoneType"),
    ("layers missing", {"input": [3, 32, 32]}, "'layers' must be a non-empty list of layers"),
    ("layers an object", spec() | {"layers": {"block": "conv"}},
     "'layers' must be a non-empty list of layers"),
    ("layers empty", spec(), "'layers' must be a non-empty list of layers"),
    ("unknown spec key", spec(*HEAD) | {"layres": []},
     "unknown spec key(s) 'layres'; allowed: classes, dataset, input, layers, name, notes, width"),
    ("input two numbers", {"input": [3, 32], "layers": HEAD},
     "'input' must be [channels, height, width] as integers, got [3, 32]"),
    ("input as text", {"input": "3x32x32", "layers": HEAD},
     "'input' must be [channels, height, width] as integers, got '3x32x32'"),
    ("input with a float", {"input": [3, 32.0, 32], "layers": HEAD},
     "'input' must be [channels, height, width] as integers, got [3, 32.0, 32]"),
    ("input zero channels", {"input": [0, 32, 32], "layers": HEAD},
     "'input' 0×32×32 is out of range: channels 1..64, sides 1..2048"),
    ("input too large", {"input": [3, 4096, 32], "layers": HEAD},
     "'input' 3×4096×32 is out of range: channels 1..64, sides 1..2048"),
    ("input negative", {"input": [3, -32, 32], "layers": HEAD},
     "'input' 3×-32×32 is out of range: channels 1..64, sides 1..2048"),
    ("width zero", spec(*HEAD, width=0), "'width' must be a number in (0, 4], got 0"),
    ("width negative", spec(*HEAD, width=-0.5), "'width' must be a number in (0, 4], got -0.5"),
    ("width too large", spec(*HEAD, width=5), "'width' must be a number in (0, 4], got 5"),
    ("width NaN", spec(*HEAD, width=math.nan), "'width' must be a number in (0, 4], got nan"),
    ("width infinite", spec(*HEAD, width=math.inf), "'width' must be a number in (0, 4], got inf"),
    ("width text", spec(*HEAD, width="0.5"), "'width' must be a number in (0, 4], got '0.5'"),
    ("width bool", spec(*HEAD, width=True), "'width' must be a number in (0, 4], got True"),
    ("width beyond any float", spec(*HEAD, width=10 ** 400),
     "'width' must be a number in (0, 4], got an integer of about 401 digits"),
    ("classes zero", spec(*HEAD, classes=0), "'classes' must be an integer from 1 to 100000, got 0"),
    ("classes fraction", spec(*HEAD, classes=2.5),
     "'classes' must be an integer from 1 to 100000, got 2.5"),
    ("classes bool", spec(*HEAD, classes=True),
     "'classes' must be an integer from 1 to 100000, got True"),
    ("classes huge", spec(*HEAD, classes=10 ** 6),
     "'classes' must be an integer from 1 to 100000, got 1000000"),
    ("name not text", spec(*HEAD, name=5), "'name' must be a string of at most 200 characters"),
]


@pytest.mark.parametrize("s,message", [c[1:] for c in TOP_ERRORS], ids=[c[0] for c in TOP_ERRORS])
def test_spec_level_errors(s, message):
    e = error(s)
    assert str(e) == message and e.layer is None
    with pytest.raises(SpecError, match=re.escape(message)):
        normalize_spec(s)


def test_spec_error_is_a_value_error_with_its_parts():
    e = error(spec({"block": "conv", "params": {"out": 0}}, *HEAD))
    assert isinstance(e, ValueError)
    assert (e.layer, e.block, e.problem) == (0, "conv", "'out' must be at least 1, got 0")


def test_error_messages_stay_short_for_huge_values():
    big = list(range(100_000))
    for s in (spec({"block": "conv", "params": {"act": big}}, *HEAD),
              spec({"block": "conv", "params": {"x" * 10_000: 1}}, *HEAD),
              spec(*HEAD, input=big),
              spec({"block": "conv", "repeat": big}, *HEAD),
              spec({"block": "c" * 10_000}, *HEAD),
              spec(big, *HEAD)):
        assert len(str(error(s))) < 400


def test_a_spec_just_under_the_limits_builds():
    assert MAX_MODULES == MAX_LAYERS == 1000
    net = build(spec(*[{"block": "relu"}] * (MAX_LAYERS - 2), *HEAD), "meta")
    assert len(net.layers) == MAX_LAYERS
    net = build(spec({"block": "conv", "params": {"out": 8}},
                     {"block": "basic_residual", "params": {"out": 8}, "repeat": 100},
                     {"block": "relu", "repeat": 100}, *HEAD), "meta")
    assert len(net.layers[1]) == 100 and net.layer_info[-1].out_shape == (10,)


# ------------------------------------------------------------------ spec text

def test_load_spec_text_parses_json():
    text = json.dumps(ROUND_TRIP[0])
    assert load_spec_text(text) == ROUND_TRIP[0]
    assert load_spec_text(text.encode()) == ROUND_TRIP[0]
    assert load_spec_text("\ufeff" + text) == ROUND_TRIP[0]        # a byte-order mark
    # the parsed value is not judged here: build does that, naming the layer
    assert load_spec_text("[1, 2]") == [1, 2]
    assert load_spec_text('{"layers": [{"block": "conv", "params": {"p": NaN}}]}')["layers"][0][
        "params"]["p"] != 0


@pytest.mark.parametrize("text,message", [
    ('{\n  "input": [3, 32, 32],\n    "layers": [,]\n}',
     "spec is not valid JSON: line 3 column 16: Expecting value"),
    ('{"layers": [{"block": "conv"}', "spec is not valid JSON: line 1 column 30: Expecting ',' delimiter"),
    ("", "spec is not valid JSON: line 1 column 1: Expecting value"),
    ("{'layers': []}", "spec is not valid JSON: line 1 column 2: Expecting property name enclosed "
                       "in double quotes"),
    ('{"a": 1} x', "spec is not valid JSON: line 1 column 10: Extra data"),
    ('{"a": "unterminated', "spec is not valid JSON: line 1 column 7: Unterminated string starting at"),
    ("[" + "1" * 5000 + "]", "spec is not valid JSON: a number has more than 4,300 digits"),
    ("[" * 65 + "]" * 65, "spec is nested 65 levels deep; the limit is 64"),
    ("[" * 100_000, "spec is nested 100000 levels deep; the limit is 64"),
    ('{"a": ' * 70 + "1" + "}" * 70, "spec is nested 70 levels deep; the limit is 64"),
    (b"\xff\xfe{}", "spec file is not UTF-8 text: byte 0"),
    (12, "a spec file must be text, got int"),
])
def test_load_spec_text_refuses(text, message):
    with pytest.raises(SpecError) as info:
        load_spec_text(text)
    assert str(info.value) == message


def test_load_spec_text_depth_ignores_brackets_in_strings():
    deep_in_text = json.dumps({"name": "[" * 1000 + "{" * 1000, "notes": '\\"[[[' * 100})
    assert load_spec_text(deep_in_text)["name"].startswith("[[[")
    assert load_spec_text("[" * 64 + "]" * 64) == eval("[" * 64 + "]" * 64)


def test_load_spec_text_refuses_large_files():
    text = " " * (50 * 2 ** 20)
    with pytest.raises(SpecError) as info:
        load_spec_text(text)
    assert str(info.value) == "spec file is 50.0 MB; the limit is 5 MB"
    with pytest.raises(SpecError, match=r"^spec file is 5\.0 MB; the limit is 5 MB$"):
        load_spec_text(b"x" * (5 * 2 ** 20 + 1))
    # multi-byte characters count as bytes
    with pytest.raises(SpecError, match=r"^spec file is 6\.0 MB"):
        load_spec_text("é" * (3 * 2 ** 20))
    assert load_spec_text(" " * (5 * 2 ** 20 - 2) + "[]") == []
