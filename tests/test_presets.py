"""Presets: the loader, small-input adaptation, and exact counts against torchvision."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import blocks
import presets
from blocks import SpecError, normalize_spec
from blocks.summary import summarize

REQUIRED = ["LeNet-5", "AlexNet", "VGG-11", "NiN", "GoogLeNet", "ResNet-18", "ResNet-34", "ResNet-50",
            "ResNet-18 + SE", "ResNet-18 + CBAM", "ResNet-50 + SE", "ResNet-50 + CBAM", "DenseNet-121",
            "MobileNetV1", "MobileNetV2", "GhostNet", "CoordConv ResNet-18"]
ALL = presets.list_presets()


pytestmark = pytest.mark.usefixtures("one_thread")


def tv_counts(factory, **kw) -> tuple[int, int]:
    """Parameters and FLOPs (FlopCounterMode, one 3×224×224 image) of a torchvision model."""
    with torch.device("meta"):
        model = factory(weights=None, **kw).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


# --- the loader -------------------------------------------------------------------------------

def test_every_required_preset_is_listed_once():
    assert sorted(ALL) == sorted(REQUIRED)
    assert len(list(presets.PRESET_DIR.glob("*.json"))) == len(REQUIRED)


def test_list_is_ordered_by_year_then_name():
    years = [presets.get_preset(n).year for n in ALL]
    assert years == sorted(years)
    assert ALL[0] == "LeNet-5" and ALL[-1] == "GhostNet"


@pytest.mark.parametrize("name", ["ResNet-18 + CBAM", "resnet-18 + cbam", "RESNET18_CBAM",
                                  "resnet18_cbam", "  ResNet-18 + CBAM "])
def test_names_match_display_name_or_slug_case_insensitively(name):
    assert presets.load_preset(name)["name"] == "ResNet-18 + CBAM"


def test_unknown_name_is_a_value_error_listing_the_presets():
    with pytest.raises(ValueError) as e:
        presets.load_preset("ResNet-19")
    msg = str(e.value)
    assert "unknown preset 'ResNet-19'" in msg
    assert all(n in msg for n in REQUIRED)
    with pytest.raises(ValueError):
        presets.load_preset(None)


def test_spec_has_exactly_the_spec_keys_and_the_paper_defaults():
    spec = presets.load_preset("ResNet-50")
    assert set(spec) == {"name", "input", "classes", "width", "layers"}
    assert (spec["input"], spec["classes"], spec["width"]) == ([3, 224, 224], 1000, 1.0)
    lenet = presets.load_preset("LeNet-5")
    assert (lenet["input"], lenet["classes"]) == ([1, 28, 28], 10)
    assert lenet["layers"][0] == {"block": "conv", "params": {"out": 6, "kernel": 5, "padding": 2,
                                                              "norm": "none", "act": "sigmoid"}}


def test_overrides_and_a_tuple_input():
    spec = presets.load_preset("resnet18", (3, 32, 32), classes=10, width=0.25)
    assert (spec["input"], spec["classes"], spec["width"]) == ([3, 32, 32], 10, 0.25)
    json.dumps(spec)  # plain JSON data


def test_the_default_app_preset():
    spec = presets.load_preset(presets.DEFAULT_PRESET, presets.DEFAULT_INPUT, presets.DEFAULT_CLASSES,
                               presets.DEFAULT_WIDTH)
    s = summarize(spec)
    assert s.name == "ResNet-18 + CBAM" and s.layers[-1].out_shape == (10,)
    assert [r.out_shape for r in s.layers[:5]] == [(16, 32, 32), (16, 32, 32), (32, 16, 16),
                                                    (64, 8, 8), (128, 4, 4)]


@pytest.mark.parametrize("kwargs, problem", [
    ({"input_shape": [3, 32]}, "'input' must be [channels, height, width]"),
    ({"input_shape": [3, 32.0, 32]}, "'input' must be [channels, height, width]"),
    ({"input_shape": "3x32x32"}, "'input' must be [channels, height, width]"),
    ({"input_shape": [0, 32, 32]}, "out of range"),
    ({"width": 0}, "'width' must be a number in (0, 4]"),
    ({"classes": 0}, "'classes' must be an integer"),
])
def test_impossible_settings_raise_spec_error(kwargs, problem):
    with pytest.raises(SpecError) as e:
        presets.load_preset("ResNet-18", **kwargs)
    assert problem in str(e.value)


def test_returned_specs_are_fresh_copies():
    a = presets.load_preset("VGG-11")
    a["layers"][0]["params"]["out"] = 1
    assert presets.load_preset("VGG-11")["layers"][0]["params"]["out"] == 64


def test_files_keep_width_one_and_unique_names():
    ps = presets.all_presets()
    assert all(p.width == 1.0 for p in ps)
    assert len({p.slug for p in ps}) == len({p.name.lower() for p in ps}) == len(ps)
    for p in ps:
        assert p.slug == p.slug.lower() and " " not in p.slug


def test_a_malformed_preset_file_is_reported_by_name(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "X", "year": 2000}')
    with pytest.raises(ValueError, match=r"preset file broken.json: 'paper' is missing"):
        presets._read(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="preset file broken.json cannot be read"):
        presets._read(bad)


# --- variants differ only where they should ----------------------------------------------------

@pytest.mark.parametrize("variant, base, attention", [
    ("ResNet-18 + CBAM", "ResNet-18", "cbam"), ("ResNet-18 + SE", "ResNet-18", "se"),
    ("ResNet-50 + CBAM", "ResNet-50", "cbam"), ("ResNet-50 + SE", "ResNet-50", "se"),
])
@pytest.mark.parametrize("shape", [(3, 224, 224), (3, 32, 32)])
def test_attention_variants_change_only_attention(variant, base, attention, shape):
    v = normalize_spec(presets.load_preset(variant, shape))["layers"]
    b = normalize_spec(presets.load_preset(base, shape))["layers"]
    assert len(v) == len(b)
    changed = 0
    for lv, lb in zip(v, b):
        assert (lv["block"], lv["repeat"]) == (lb["block"], lb["repeat"])
        if lv["params"] != lb["params"]:
            assert lb["params"]["attention"] == "none" and lv["params"]["attention"] == attention
            assert {**lv["params"], "attention": "none"} == lb["params"]
            changed += 1
    assert changed == 4  # the four residual stages


def test_coordconv_resnet18_is_resnet18_with_a_coordconv_stem():
    for shape in [(3, 224, 224), (3, 32, 32)]:
        c = normalize_spec(presets.load_preset("CoordConv ResNet-18", shape))["layers"]
        r = normalize_spec(presets.load_preset("ResNet-18", shape))["layers"]
        assert c[0]["block"] == "coord_conv" and r[0]["block"] == "conv"
        assert c[1:] == r[1:]
    # the stem sees 3 image + 2 coordinate channels: 5·64·7·7 weights + BN
    s = summarize(presets.load_preset("CoordConv ResNet-18"))
    assert s.layers[0].params == 5 * 64 * 49 + 2 * 64


# --- small inputs -------------------------------------------------------------------------------

def test_small_inputs_get_a_stride_one_stem_and_no_early_pool():
    big = presets.load_preset("ResNet-18")["layers"]
    small = presets.load_preset("ResNet-18", (3, 32, 32))["layers"]
    assert big[0]["params"] == {"out": 64, "kernel": 7, "stride": 2} and big[1]["block"] == "maxpool"
    assert small[0]["params"] == {"out": 64, "kernel": 3, "stride": 1}
    assert "maxpool" not in [layer["block"] for layer in small]
    assert small[1:] == big[2:]


@pytest.mark.parametrize("name", ALL)
def test_small_layers_are_chosen_below_the_threshold(name):
    p = presets.get_preset(name)
    n = p.small_below
    at = presets.load_preset(name, (3, n, n), 10, 0.25)
    below = presets.load_preset(name, (3, n - 1, n + 40), 10, 0.25)  # min(H, W) decides
    assert at["layers"] == p.layers
    assert below["layers"] == (p.small_layers if p.small_layers is not None else p.layers)
    for spec in (at, below):
        assert blocks.build(spec, device="meta").layer_info[-1].out_shape == (10,)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_preset_trains_size_forward_on_small_inputs(name, shape):
    torch.manual_seed(0)
    net = blocks.build(presets.load_preset(name, shape, classes=10, width=0.25))
    y = net(torch.randn(2, *shape))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_every_preset_builds_at_its_paper_resolution(name):
    spec = presets.load_preset(name)
    net = blocks.build(spec, device="meta")
    assert net.layer_info[-1].out_shape == (spec["classes"],)
    assert blocks.to_spec(net) == normalize_spec(spec)


# --- exact numbers at ImageNet settings ---------------------------------------------------------

TORCHVISION = [
    ("ResNet-18", torchvision.models.resnet18, 11_689_512),
    ("ResNet-34", torchvision.models.resnet34, 21_797_672),
    ("ResNet-50", torchvision.models.resnet50, 25_557_032),
    ("VGG-11", torchvision.models.vgg11, 132_863_336),
    ("DenseNet-121", torchvision.models.densenet121, 7_978_856),
    ("MobileNetV2", torchvision.models.mobilenet_v2, 3_504_872),
    ("AlexNet", torchvision.models.alexnet, 61_100_840),
]


@pytest.mark.parametrize("name, factory, published", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_params_equal_torchvision_and_flops_within_2_percent(name, factory, published):
    tv_params, tv_flops = tv_counts(factory)
    s = summarize(presets.load_preset(name))
    assert tv_params == published
    assert s.params == tv_params
    assert s.flops == pytest.approx(tv_flops, rel=0.02)


def test_googlenet_is_torchvisions_with_the_papers_5x5_convs():
    # torchvision's third Inception path uses a 3×3 conv; the paper (Table 1) a 5×5. Each of the
    # nine modules therefore has reduce·out·(25 − 9) more weights, and nothing else differs.
    tv_params, tv_flops = tv_counts(torchvision.models.googlenet, aux_logits=False, init_weights=False)
    spec = presets.load_preset("GoogLeNet")
    extra = sum(l["params"]["c3"][0] * l["params"]["c3"][1] * 16
                for l in spec["layers"] if l["block"] == "inception")
    assert extra == 380_928
    s = summarize(spec)
    assert s.params == tv_params + extra
    assert s.flops > tv_flops


def _attention_params(c: int, kind: str) -> int:
    se = c * (c // 16) + c // 16 + (c // 16) * c + c   # two FCs with biases, r = 16
    return se if kind == "se" else se + 2 * 49 + 1      # CBAM adds its 7×7 spatial conv (with bias)


@pytest.mark.parametrize("kind", ["se", "cbam"])
def test_attention_resnet50_counts(kind):
    stages = [(256, 3), (512, 4), (1024, 6), (2048, 3)]
    expected = 25_557_032 + sum(n * _attention_params(c, kind) for c, n in stages)
    s = summarize(presets.load_preset(f"ResNet-50 + {kind.upper()}"))
    assert s.params == expected
    assert s.params == pytest.approx(28.09e6, rel=0.005)  # both papers report 28.09M


@pytest.mark.parametrize("kind", ["se", "cbam"])
def test_attention_resnet18_counts(kind):
    expected = 11_689_512 + sum(2 * _attention_params(c, kind) for c in (64, 128, 256, 512))
    assert summarize(presets.load_preset(f"ResNet-18 + {kind.upper()}")).params == expected


def test_mobilenet_v1_matches_the_paper():
    s = summarize(presets.load_preset("MobileNetV1"))
    assert s.params == 4_231_976                          # paper Table 8: 4.2M
    assert s.flops == pytest.approx(2 * 569e6, rel=0.01)  # paper: 569M multiply-adds


def _make_divisible(v: float, divisor: int = 4) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _official_ghostnet_params() -> int:
    """GhostNet 1.0× counted layer by layer from the official code's structure."""
    def ghost_module(c_in, c_out):                   # 1×1 primary + 3×3 depthwise cheap op, BN each
        init = math.ceil(c_out / 2)
        return c_in * init + 2 * init + 9 * init + 2 * init

    cfg = [(3, 16, 16, 0, 1), (3, 48, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 1, 2), (5, 120, 40, 1, 1),
           (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1),
           (3, 480, 112, 1, 1), (3, 672, 112, 1, 1), (5, 672, 160, 1, 2), (5, 960, 160, 0, 1),
           (5, 960, 160, 1, 1), (5, 960, 160, 0, 1), (5, 960, 160, 1, 1)]
    total, c_in = 3 * 16 * 9 + 2 * 16, 16             # stem conv + BN
    for k, mid, c_out, se, s in cfg:
        total += ghost_module(c_in, mid) + ghost_module(mid, c_out)
        if s > 1:
            total += k * k * mid + 2 * mid
        if se:
            r = _make_divisible(mid * 0.25)
            total += mid * r + r + r * mid + mid
        if s > 1 or c_in != c_out:
            total += k * k * c_in + 2 * c_in + c_in * c_out + 2 * c_out
        c_in = c_out
    total += 160 * 960 + 2 * 960                      # 1×1 conv + BN
    total += 960 * 1280 + 1280 + 1280 * 1000 + 1000   # conv_head (as a linear) + classifier
    return total


def test_ghostnet_matches_the_official_count():
    s = summarize(presets.load_preset("GhostNet"))
    assert s.params == _official_ghostnet_params() == 5_182_508
    assert s.params == pytest.approx(5.2e6, rel=0.01)   # paper Table 7: 5.2M
    assert s.flops == pytest.approx(2 * 141e6, rel=0.02)  # paper: 141M FLOPs (multiply-adds)
