"""Receptive fields (blocks/receptive.py) against the gradient-support oracle (tests/rf_oracle.py):
every layer of every preset at its default input, random specs, and the reference figures."""
from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn as nn

import blocks
import presets
from blocks import SpecError
from blocks.receptive import layer_fields, receptive_field
from blocks.summary import summarize
from rf_oracle import bbox, supports

pytestmark = pytest.mark.usefixtures("one_thread")


def _check(net, fields, maps, wholes):
    """Each layer's oracle support against the computed field of its centre unit, clipped to
    the image: exact fields match the support's bounding box; bounds contain it. A global
    field's unit sees everything that all units of the last spatial map see together."""
    _, h, w = net.input_shape
    last_whole = None
    for info, f, m, whole in zip(net.layer_info, fields, maps, wholes):
        where = f"layer {info.index} ({info.block}, RF {f.text()})"
        if len(info.out_shape) == 3:
            oh, ow = info.out_shape[1:]
            last_whole = whole
        if f.receptive_field is not None:
            (r0, r1), (c0, c1) = f.field.span((oh - 1) // 2), f.field.span((ow - 1) // 2)
            want = (max(0, r0), min(h - 1, r1), max(0, c0), min(w - 1, c1))
            got = bbox(m)
            if f.global_:
                assert got[0] <= want[0] and got[1] >= want[1], where
            elif f.exact:
                assert got == want, where
            else:
                assert want[0] <= got[0] and got[1] <= want[1] and want[2] <= got[2] \
                    and got[3] <= want[3], where
        if f.global_:
            assert torch.equal(m, last_whole), where
        elif len(info.out_shape) == 3 and f.receptive_field < min(h, w) // 2:
            assert not torch.equal(m, whole), where  # a small local field is not global


@pytest.mark.parametrize("name", presets.list_presets())
def test_every_layer_of_every_preset_matches_gradient_support(name):
    # the field does not depend on the channel counts (a narrow Ghost module's cut to n
    # channels aside, which drops every ghost when n = 1): width 1/16 keeps the oracle fast
    net = blocks.build(presets.load_preset(name, width=0.25 if name == "GhostNet" else 0.0625))
    fields = layer_fields(net)
    assert [f.receptive_field for f in fields] == \
        [f.receptive_field for f in layer_fields(blocks.build(presets.load_preset(name), "meta"))]
    _check(net, fields, supports(net), supports(net, whole=True))


@pytest.mark.parametrize("name, layer, rf", [("ResNet-18", 5, 435), ("ResNet-50", 5, 427),
                                             ("VGG-11", 4, 150), ("AlexNet", 7, 195)])
def test_reference_figures(name, layer, rf):
    s = summarize(presets.load_preset(name))
    assert s.layers[layer].receptive_field == rf
    assert s.layers[layer].jump == 32 and not s.layers[layer].rf_global


@pytest.mark.parametrize("name, layer, rf, side", [("ResNet-18", 5, 435, 512), ("ResNet-50", 5, 427, 512),
                                                   ("VGG-11", 4, 150, 192), ("AlexNet", 7, 195, 256)])
def test_reference_figures_as_gradient_support_without_clipping(name, layer, rf, side):
    # on an input large enough that the centre unit's field lies inside the image
    spec = presets.load_preset(name, (1, side, side), width=0.0625)
    spec["layers"] = spec["layers"][:layer + 1] + [{"block": "global_avg_pool"}, {"block": "linear"}]
    net = blocks.build(spec)
    m = supports(net)[layer]
    r0, r1, c0, c1 = bbox(m)
    assert (r1 - r0 + 1, c1 - c0 + 1) == (rf, rf)
    assert r0 > 0 and c0 > 0 and r1 < side - 1 and c1 < side - 1      # not clipped


@pytest.mark.parametrize("factory, cut, rf", [("resnet18", -2, 435), ("resnet50", -2, 427),
                                              ("alexnet", 1, 195), ("vgg11", 1, 150)])
def test_receptive_field_of_torchvision_models(factory, cut, rf):
    """The module API traces any module: torchvision's own networks, up to their last map."""
    import torchvision
    with torch.device("meta"):
        model = getattr(torchvision.models, factory)(weights=None)
    trunk = nn.Sequential(*list(model.children())[:cut]) if factory.startswith("resnet") \
        else model.features
    f = receptive_field(trunk, (3, 224, 224))
    assert (f.receptive_field, f.jump, f.global_) == (rf, 32, False)


def _chain(dilations):
    return nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=d, dilation=d) for d in dilations])


@pytest.mark.parametrize("dilations, rf, reachable", [((1, 1, 1), 7, 49), ((2, 2, 2), 13, 49),
                                                      ((1, 2, 3), 13, 169)])
def test_stacked_and_dilated_convs_and_the_gridding_effect(dilations, rf, reachable):
    assert receptive_field(_chain(dilations), (1, 33, 33)).receptive_field == rf
    spec = {"input": [1, 33, 33], "classes": 2,
            "layers": [{"block": "conv", "params": {"out": 1, "dilation": d}} for d in dilations]
            + [{"block": "global_avg_pool"}, {"block": "linear"}]}
    net = blocks.build(spec)
    assert layer_fields(net)[2].receptive_field == rf
    m = supports(net)[2]
    r0, r1, c0, c1 = bbox(m)
    assert (r1 - r0 + 1, c1 - c0 + 1) == (rf, rf)
    assert int(m.sum()) == reachable  # 2-2-2 reaches 7×7 of the 13×13 (holes); 1-2-3 all 169


def test_jump_and_start_follow_araujo():
    # conv 3×3 /2 pad 1, then 2×2 pool: jump 2 then 4; start 0 then 0 + (1/2)·2 = 1
    f = receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.MaxPool2d(2)), (1, 32, 32))
    assert (f.receptive_field, f.jump, f.start) == (5, 4, 1)
    # no padding: start is the field's centre, (k−1)/2
    f = receptive_field(nn.Conv2d(1, 1, 5), (1, 32, 32))
    assert (f.receptive_field, f.jump, f.start) == (5, 1, 2)


def test_multi_branch_takes_the_largest_path():
    s = summarize(presets.load_preset("GoogLeNet", (3, 64, 64), width=0.0625))
    inc = [l for l in s.layers if l.block == "inception"][0]
    before = s.layers[inc.index - 1]
    # the 5×5 path grows the field by 4 jumps (the 3×3 path by 2, the pool path by 2)
    assert inc.receptive_field == before.receptive_field + 4 * before.jump


def test_gates_and_heads_are_global():
    s = summarize(presets.load_preset("ResNet-18 + SE", (3, 32, 32), width=0.0625))
    assert s.layers[1].rf_global and s.layers[1].receptive_field == 3 + 4 * 2
    assert not s.layers[0].rf_global
    head = s.layers[-1]
    assert head.rf_global and head.receptive_field is None and head.jump is None


BLOCK_CHOICES = ["conv", "dilated_conv", "depthwise_separable", "grouped_conv", "maxpool", "avgpool",
                 "basic_residual", "bottleneck_residual", "inverted_residual", "inception", "ghost_module",
                 "ghost_bottleneck", "coord_conv", "transposed_conv", "dense_block", "transition",
                 "nin_block", "vgg_block", "se", "cbam", "dropblock", "batchnorm", "relu"]


def _random_layer(rng: random.Random) -> dict:
    b = rng.choice(BLOCK_CHOICES)
    p: dict = {}
    if b in ("conv", "dilated_conv", "depthwise_separable", "grouped_conv", "coord_conv"):
        p = {"out": rng.choice([2, 4]), "kernel": rng.choice([1, 2, 3, 5]), "stride": rng.choice([1, 1, 2, 3])}
        if b in ("conv", "dilated_conv", "depthwise_separable"):
            p["dilation"] = rng.choice([1, 2, 3])
        if b == "grouped_conv":
            p["groups"] = rng.choice([1, 2])
        if rng.random() < 0.4:
            p["padding"] = rng.randint(0, 2)
    elif b in ("maxpool", "avgpool"):
        k = rng.choice([2, 3])
        p = {"kernel": k, "stride": rng.choice([None, 1, 2]), "padding": rng.randint(0, k // 2),
             "ceil_mode": rng.random() < 0.3}
    elif b in ("basic_residual", "bottleneck_residual", "inverted_residual"):
        p = {"out": rng.choice([4, 8]), "stride": rng.choice([1, 2]),
             "attention": rng.choice(["none", "none", "se", "cbam"])}
    elif b == "inception":
        p = {"c1": 2, "c2": [2, 2], "c3": [2, 2], "c4": 2}
    elif b == "ghost_module":
        p = {"out": rng.choice([1, 3, 4]), "kernel": rng.choice([1, 3]), "stride": rng.choice([1, 2]),
             "dw_kernel": rng.choice([1, 3, 5])}
    elif b == "ghost_bottleneck":
        p = {"out": 4, "mid": 8, "stride": rng.choice([1, 2]), "kernel": rng.choice([3, 5])}
    elif b == "transposed_conv":
        p = {"out": 2, "kernel": rng.choice([2, 3, 4]), "stride": rng.choice([1, 2]), "padding": rng.randint(0, 1)}
    elif b == "dense_block":
        p = {"layers": 2, "growth": 2, "bn_size": 1}
    elif b == "dropblock":
        p = {"block_size": 1}
    return {"block": b, "params": p}


def _fits(net) -> bool:
    """Every layer's centre-unit field lies inside the image (so holes from dilation or
    stride at the field's edge are not confused with clipping)."""
    _, h, w = net.input_shape
    for info, f in zip(net.layer_info, layer_fields(net)):
        if f.receptive_field is not None and len(info.out_shape) == 3:
            (r0, r1), (c0, c1) = (f.field.span((n - 1) // 2) for n in info.out_shape[1:])
            if r0 < 0 or c0 < 0 or r1 > h - 1 or c1 > w - 1:
                return False
    return True


def test_random_specs_match_gradient_support():
    rng = random.Random(12)
    checked, seen = 0, set()
    while checked < 40:
        layers = [_random_layer(rng) for _ in range(rng.randint(1, 5))]
        c = rng.choice([1, 2, 3, 4])
        for side in (24, 40, 64, 96, 128):
            spec = {"input": [c, side, side + rng.choice([0, 1])], "classes": 2,
                    "layers": layers + [{"block": "global_avg_pool"}, {"block": "linear"}]}
            try:
                net = blocks.build(spec, "meta")
            except SpecError:
                continue
            if _fits(net):
                break
        else:
            continue
        net = blocks.build(spec)
        _check(net, layer_fields(net), supports(net), supports(net, whole=True))
        checked += 1
        seen.update(layer["block"] for layer in layers)
    assert seen >= set(BLOCK_CHOICES) - {"relu", "batchnorm", "dropblock"}, set(BLOCK_CHOICES) - seen


def test_summary_json_has_the_fields(capsys):
    from lab.cli import main
    assert main(["summary", "--preset", "ResNet-18", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert layers[5]["receptive_field"] == 435 and layers[5]["jump"] == 32 and layers[5]["start"] == 0
    assert layers[1]["receptive_field"] == 11 and layers[1]["jump"] == 4
    assert layers[-1]["receptive_field"] is None and layers[-1]["rf_global"] is True
