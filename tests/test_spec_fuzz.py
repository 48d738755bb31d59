"""Property-based fuzzing of the spec builder and the spec loader (hypothesis).

Specs are generated from the registry's own schema — every block, every parameter — with
valid values mixed with nonsense: zero, negative and huge channels, kernels larger than the
input, unknown blocks and parameters, wrong types, NaN and infinity, 10,000 layers,
malformed and oversized JSON. Each spec either builds or raises `SpecError`, whose message
names the layer whenever the problem is in one; nothing else may escape, and hypothesis's
deadline holds every example to 2 s. Builds run on the meta device (no memory).
"""
from __future__ import annotations

import json
import math
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import blocks
from blocks import SpecError, build, load_spec_text
from blocks.builder import MAX_LAYERS

BLOCKS = {b.name: b for b in blocks.list_blocks()}
NAMES = sorted(BLOCKS)
FLATTENING = ("global_avg_pool", "flatten", "linear")    # end the feature-map part
MAP_NAMES = [n for n in NAMES if n not in FLATTENING]
FUZZ = settings(deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])

# ------------------------------------------------------------------ strategies

HUGE_INTS = [2 ** 31, 2 ** 63, 10 ** 12, 10 ** 30, 10 ** 400, -10 ** 400]
ODD_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.5, 2.5, 1e9]

nonsense = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 0),
    st.sampled_from(HUGE_INTS),
    st.sampled_from(ODD_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["3", "relu", "", "NaN", "1e3", "batch "]),
    st.lists(st.one_of(st.integers(-5, 300), st.text(max_size=2)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2),
)


def valid_value(p: blocks.Param) -> st.SearchStrategy:
    """A value inside the parameter's schema, biased towards small numbers."""
    if p.type == "bool":
        s = st.booleans()
    elif p.type == "str":
        s = st.sampled_from(list(p.choices) + [c.upper() for c in p.choices[:2]])
    elif p.type == "float":
        lo, hi = p.min if p.min is not None else -1e3, p.max if p.max is not None else 1e3
        s = st.one_of(st.floats(lo, hi), st.sampled_from([lo, hi]))
    else:
        lo = int(p.min) if p.min is not None else 0
        hi = int(p.max) if p.max is not None else 1 << 16
        small = st.integers(lo, min(hi, lo + 12))
        anywhere = st.integers(lo, hi)
        s = st.one_of(small, small, anywhere, st.sampled_from([lo, hi]))
        if p.type == "ints":   # inception's [reduce, out] pairs; sometimes the wrong length
            s = st.lists(st.one_of(small, anywhere), min_size=2, max_size=2) | \
                st.lists(small, min_size=1, max_size=3)
    if p.optional or p.default is None:
        s = st.one_of(st.none(), s)
    return s


@st.composite
def params_for(draw, name: str, nonsense_share: int = 6):
    """Some of the block's parameters, each valid or (nonsense_share %) nonsense."""
    out = {}
    for p in BLOCKS[name].params:
        if draw(st.booleans()):
            roll = draw(st.integers(0, 99))
            out[p.name] = draw(nonsense if roll >= 100 - nonsense_share else valid_value(p))
    return out


LAYER_SPOILS = ["not an object", "unknown block", "block not a name", "params not an object",
                "unknown parameter", "bad repeat", "unknown key"]


@st.composite
def layers(draw):
    """A layer from the registry's schema; one in eight is spoilt in one structural way."""
    name = draw(st.sampled_from(NAMES if draw(st.integers(0, 9)) == 9 else MAP_NAMES))
    layer: dict = {"block": name, "params": draw(params_for(name))}
    if draw(st.integers(0, 9)) == 9:
        layer["repeat"] = draw(st.integers(1, 4))
    # hypothesis favours 0 (its simplest value), so the rare branch sits at the top
    if draw(st.integers(0, 7)) == 7:
        spoil = draw(st.sampled_from(LAYER_SPOILS))
        if spoil == "not an object":
            return draw(st.one_of(nonsense, st.sampled_from(NAMES)))
        if spoil == "unknown block":
            layer["block"] = draw(st.text(string.ascii_lowercase + "_-\n", max_size=12))
        elif spoil == "block not a name":
            layer["block"] = draw(nonsense)
        elif spoil == "params not an object":
            layer["params"] = draw(nonsense)
        elif spoil == "unknown parameter":
            layer["params"][draw(st.sampled_from(["kernal", "channels", "in_channels", "inplace",
                                                  "", "p", "x" * 100]))] = draw(nonsense)
        elif spoil == "bad repeat":
            layer["repeat"] = draw(st.one_of(nonsense, st.sampled_from([0, -1, 101, 2.0, "2"])))
        else:
            layer[draw(st.sampled_from(["repaet", "name", "param", "Block"]))] = 1
    return layer


HEADS = [[{"block": "global_avg_pool"}, {"block": "linear"}],
         [{"block": "flatten"}, {"block": "linear"}], [{"block": "linear"}], []]
SPEC_SPOILS = ["not an object", "input", "classes", "width", "layers", "10,000 layers",
               "unknown key", "name"]


@st.composite
def specs(draw):
    """(spec, top_level_valid): a spec, and whether everything but its layers is valid.
    One in eight specs is spoilt at the top level."""
    side = st.one_of(st.integers(8, 48), st.integers(1, 48))
    if draw(st.integers(0, 9)) == 9:                     # large inputs, up to the limit
        spec: dict = {"input": [draw(st.integers(1, 64)), draw(st.integers(1, 2048)),
                                draw(st.integers(1, 2048))]}
    else:
        spec = {"input": [draw(st.integers(1, 8)), draw(side), draw(side)]}
    if draw(st.booleans()):
        spec["classes"] = draw(st.integers(1, 1000))
    if draw(st.booleans()):
        spec["width"] = draw(st.floats(0.05, 4.0))
    spec["layers"] = draw(st.lists(layers(), min_size=1, max_size=6)) + draw(st.sampled_from(HEADS))
    if draw(st.integers(0, 7)) < 7:
        return spec, True
    spoil = draw(st.sampled_from(SPEC_SPOILS))
    if spoil == "not an object":
        return draw(st.one_of(nonsense, st.just(spec["layers"]))), False
    if spoil == "10,000 layers":
        spec["layers"] = spec["layers"][:1] * 10_000
        return spec, True
    if spoil == "input":
        spec["input"] = draw(st.one_of(nonsense, st.lists(st.one_of(st.integers(-3, 3000), nonsense),
                                                          max_size=4)))
    elif spoil == "layers":
        spec["layers"] = draw(st.one_of(nonsense, st.just([]), st.just(spec["layers"][0])))
    elif spoil == "unknown key":
        spec[draw(st.sampled_from(["layres", "Input", "seed"]))] = 1
    else:
        spec[spoil] = draw(nonsense)
    return spec, False


# ------------------------------------------------------------------ the property

def check_builds_or_names_the_layer(spec, top_valid: bool) -> bool:
    """Build on meta; return whether it built. Any exception but SpecError fails the test."""
    try:
        net = build(spec, "meta")
    except SpecError as e:
        message = str(e)
        assert message and "\n" not in message and len(message) < 600, message
        if e.layer is not None:
            assert message.startswith(f"layer {e.layer}"), message
            if e.block is not None:
                assert message.startswith(f"layer {e.layer} ({e.block}): "), message
            layer = spec["layers"][e.layer]
            if isinstance(layer, dict) and isinstance(layer.get("block"), str) \
                    and layer["block"] in BLOCKS:
                assert e.block == layer["block"], message
        elif top_valid:
            pytest.fail(f"the spec's top level is valid, yet the error names no layer: {message}")
        return False
    # it built: one module per layer, shapes chained, a flat output
    assert len(net.layers) == len(net.layer_info) == len(spec["layers"])
    for before, after in zip(net.layer_info, net.layer_info[1:]):
        assert before.out_shape == after.in_shape
    assert net.layer_info[0].in_shape == tuple(net.spec["input"])
    assert len(net.layer_info[-1].out_shape) == 1 and net.layer_info[-1].out_shape[0] >= 1
    assert all(p.is_meta for p in net.parameters())
    return True


@settings(FUZZ, max_examples=1200)
@given(specs())
@example(({"input": [3, 32, 32], "layers": [{"block": "relu"}] * 10_000}, True))
@example(({"input": [3, 1, 1], "layers": [{"block": "maxpool", "params": {"kernel": 3}}]}, True))
@example(({"layers": [{"block": "conv", "params": {"out": 10 ** 400}}]}, True))
@example(({"layers": [{"block": "dense_block", "params": {"layers": 128}, "repeat": 100}]}, True))
@example(({"width": 4, "layers": [{"block": "inception", "repeat": 100}] * 10}, True))
def test_random_specs_build_or_name_the_layer(case):
    spec, top_valid = case
    check_builds_or_names_the_layer(spec, top_valid)


@st.composite
def one_block_specs(draw):
    """Every block in turn, on a random small input, with every parameter drawn."""
    name = draw(st.sampled_from(NAMES))
    info = BLOCKS[name]
    params = {p.name: draw(nonsense if draw(st.integers(0, 9)) == 9 else valid_value(p))
              for p in info.params if draw(st.booleans())}
    side = st.one_of(st.integers(8, 40), st.integers(1, 40))
    shape = [draw(st.integers(1, 16)), draw(side), draw(side)]
    roll = draw(st.integers(0, 9))
    if roll == 9:       # anything, including a map block after flatten and no head
        before = draw(st.sampled_from([[], [{"block": "flatten"}], [{"block": "global_avg_pool"}]]))
        head = draw(st.sampled_from(HEADS))
    elif info.takes_flat and roll >= 6:
        before, head = [{"block": "flatten"}], [{"block": "linear"}]
    else:
        before, head = [], HEADS[1] if name not in FLATTENING else [{"block": "linear"}]
    layer = {"block": name, "params": params}
    if draw(st.integers(0, 4)) == 4:
        layer["repeat"] = draw(st.integers(1, 3))
    return {"input": shape, "width": draw(st.sampled_from([1.0, 0.25, 2.0])),
            "layers": before + [layer] + head}


@settings(FUZZ, max_examples=1200)
@given(one_block_specs())
def test_every_block_with_random_parameters(spec):
    check_builds_or_names_the_layer(spec, True)


def test_the_property_holds_for_every_block_built_from_defaults():
    """The check above also passes on success: every block builds from its defaults."""
    for name in NAMES:
        flat = name in FLATTENING
        spec = {"input": [4, 32, 32],
                "layers": [{"block": name}] + ([] if flat else [{"block": "flatten"}])
                + [{"block": "linear"}]}
        assert check_builds_or_names_the_layer(spec, True), name


# ------------------------------------------------------------------ spec text

@st.composite
def texts(draw):
    spec, _ = draw(specs())
    try:
        text = json.dumps(spec)
    except (ValueError, TypeError):
        text = "{}"
    roll = draw(st.integers(0, 9))
    if roll < 3:
        return text                                                  # as written
    if roll < 5:
        return text[:draw(st.integers(0, len(text)))]                # cut short
    if roll < 7:
        at = draw(st.integers(0, len(text)))                         # something inserted
        junk = draw(st.text(st.sampled_from('{}[]",:\\ 0-e.nNaI'), max_size=8))
        return text[:at] + junk + text[at:]
    if roll < 8:
        depth = draw(st.integers(1, 3000))                           # deep nesting
        opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ("[", "}")]))
        return opening * depth + "1" + closing * depth
    return draw(st.text(max_size=60))                                # anything at all


@settings(FUZZ, max_examples=400)
@given(texts())
def test_spec_text_loads_or_raises_spec_error(text):
    try:
        spec = load_spec_text(text)
    except SpecError as e:
        assert str(e).startswith(("spec is", "spec file is")), str(e)
        return
    check_builds_or_names_the_layer(spec, False)


def test_fifty_megabyte_json_is_refused_before_parsing():
    layer = json.dumps({"block": "conv", "params": {"out": 8}})
    count = 50 * 2 ** 20 // (len(layer) + 2) + 1
    text = '{"layers": [' + ", ".join([layer] * count) + "]}"
    assert len(text) > 50 * 2 ** 20
    with pytest.raises(SpecError) as info:
        load_spec_text(text)
    assert str(info.value) == f"spec file is {len(text) / 2 ** 20:.1f} MB; the limit is 5 MB"
    assert str(info.value).startswith("spec file is 50.0 MB")


def test_ten_thousand_layers_from_text():
    text = json.dumps({"layers": [{"block": "relu"}] * 10_000})
    with pytest.raises(SpecError) as info:
        build(load_spec_text(text), "meta")
    assert str(info.value) == f"layer {MAX_LAYERS} (relu): the spec has 10000 layers; at most " \
                              f"{MAX_LAYERS} are allowed"
