"""Spec -> nn.Module. The builder threads the shape through the stack.

A spec is plain JSON (see DESIGN.md). The user never writes input channels or a Linear's
in_features; a `linear` without `out` maps to `classes`; `width` scales every channel
parameter; for a repeated layer, `stride` applies to its first repeat only (as in ResNet's
stages). Anything that cannot be built raises `SpecError` naming the layer and block.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from blocks.registry import BlockInfo, Shape, SpecError, get_block

MAX_LAYERS = 1000          # after expanding repeats
MAX_REPEAT = 100
MAX_CHANNELS_IN = 64
MAX_SIDE = 2048
MAX_CLASSES = 100_000
SPEC_KEYS = {"name", "input", "classes", "width", "layers", "dataset", "notes"}
LAYER_KEYS = {"block", "params", "repeat"}


@dataclass(frozen=True)
class LayerInfo:
    """What the builder learnt about one spec layer (all its repeats)."""
    index: int
    block: str
    name: str            # module name inside the Network, e.g. "layers.3"
    in_shape: Shape
    out_shape: Shape
    params: dict         # validated, unscaled
    repeat: int


class Network(nn.Module):
    """A built spec: `layers` is an nn.Sequential with one child per spec layer."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", spec: dict, info: list[LayerInfo]):
        super().__init__()
        self.layers = nn.Sequential(layers)
        self.spec = spec
        self.layer_info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.layers(x)

    @property
    def input_shape(self) -> Shape:
        return tuple(self.spec["input"])


def scale_channels(c: int, width: float) -> int:
    """Channel count under the width multiplier (MobileNet's alpha); never below 1."""
    if width == 1.0:
        return c
    return max(1, int(round(c * width)))


def normalize_spec(spec: Any) -> dict:
    """Validate the top level of a spec and fill in defaults; returns a new dict."""
    if not isinstance(spec, dict):
        raise SpecError(f"a spec must be a JSON object, got {type(spec).__name__}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SpecError(f"unknown spec key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: {', '.join(sorted(SPEC_KEYS))}")
    out = {"name": spec.get("name", "network")}
    if not isinstance(out["name"], str) or len(out["name"]) > 200:
        raise SpecError("'name' must be a string of at most 200 characters")
    shape = spec.get("input", [3, 32, 32])
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
        raise SpecError(f"'input' must be [channels, height, width] as integers, got {shape!r}")
    c, h, w = shape
    if not (1 <= c <= MAX_CHANNELS_IN and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise SpecError(f"'input' {c}×{h}×{w} is out of range: channels 1..{MAX_CHANNELS_IN}, "
                        f"sides 1..{MAX_SIDE}")
    out["input"] = [c, h, w]
    classes = spec.get("classes", 10)
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= MAX_CLASSES:
        raise SpecError(f"'classes' must be an integer from 1 to {MAX_CLASSES}, got {classes!r}")
    out["classes"] = classes
    width = spec.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) \
            or not 0 < width <= 4:
        raise SpecError(f"'width' must be a number in (0, 4], got {width!r}")
    out["width"] = float(width)
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError("'layers' must be a non-empty list of layers")
    if len(layers) > MAX_LAYERS:
        raise SpecError(f"the spec has {len(layers)} layers; at most {MAX_LAYERS} are allowed",
                        layer=MAX_LAYERS)
    for key in ("dataset", "notes"):
        if key in spec:
            out[key] = spec[key]
    out["layers"] = [_normalize_layer(i, layer) for i, layer in enumerate(layers)]
    total = sum(l["repeat"] for l in out["layers"])
    if total > MAX_LAYERS:
        running = 0
        for i, l in enumerate(out["layers"]):
            running += l["repeat"]
            if running > MAX_LAYERS:
                raise SpecError(f"repeats bring the network to {total} layers; at most {MAX_LAYERS} "
                                f"are allowed", layer=i, block=l["block"])
    return out


def _normalize_layer(i: int, layer: Any) -> dict:
    if not isinstance(layer, dict):
        raise SpecError(f"a layer must be an object like {{\"block\": \"conv\"}}, got {layer!r:.60}",
                        layer=i)
    name = layer.get("block")
    if not isinstance(name, str):
        raise SpecError("missing 'block' name", layer=i)
    try:
        info = get_block(name)
    except KeyError:
        raise SpecError(f"unknown block '{name[:60]}'; `python -m lab blocks` lists them",
                        layer=i) from None
    unknown = set(layer) - LAYER_KEYS
    if unknown:
        raise SpecError(f"unknown layer key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: block, params, repeat", layer=i, block=name)
    params = layer.get("params", {}) or {}
    if not isinstance(params, dict):
        raise SpecError("'params' must be an object", layer=i, block=name)
    allowed = {p.name for p in info.params}
    bad = [k for k in params if k not in allowed]
    if bad:
        hint = f"allowed: {', '.join(sorted(allowed))}" if allowed else "it takes no parameters"
        raise SpecError(f"unknown parameter '{str(bad[0])[:40]}'; {hint}", layer=i, block=name)
    clean = {}
    for p in info.params:
        try:
            clean[p.name] = p.validate(params.get(p.name, p.default))
        except ValueError as e:
            raise SpecError(str(e), layer=i, block=name) from None
    repeat = layer.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_REPEAT:
        raise SpecError(f"'repeat' must be an integer from 1 to {MAX_REPEAT}, got {repeat!r}",
                        layer=i, block=name)
    return {"block": name, "params": clean, "repeat": repeat}


def _scaled(info: BlockInfo, params: dict, width: float, classes: int) -> dict:
    out = dict(params)
    for p in info.params:
        v = out[p.name]
        if p.channels and v is not None:
            out[p.name] = [scale_channels(c, width) for c in v] if isinstance(v, list) \
                else scale_channels(v, width)
    if "out" in out and out["out"] is None and info.name == "linear":
        out["out"] = classes
    return out


def _out_shape(module: nn.Module, in_shape: Shape) -> Shape:
    module.eval()
    with torch.no_grad():
        y = module(torch.empty((2, *in_shape), device="meta"))
    if not isinstance(y, torch.Tensor):
        raise ValueError("the block returned no tensor")
    return tuple(int(s) for s in y.shape[1:])


def _describe(shape: Shape) -> str:
    return "×".join(map(str, shape))


def build(spec: Any, device: str | torch.device = "cpu") -> Network:
    """Build a spec into a `Network` on `device` ("meta" builds without memory)."""
    spec = normalize_spec(spec)
    width, classes = spec["width"], spec["classes"]
    shape: Shape = tuple(spec["input"])
    modules: "OrderedDict[str, nn.Module]" = OrderedDict()
    infos: list[LayerInfo] = []
    for i, layer in enumerate(spec["layers"]):
        info = get_block(layer["block"])
        params = _scaled(info, layer["params"], width, classes)
        in_shape = shape
        if len(shape) == 1 and not info.takes_flat:
            raise SpecError(f"needs a feature map (C×H×W) but receives flat features of size "
                            f"{shape[0]}; move it before the flatten/pooling that precedes it",
                            layer=i, block=info.name)
        repeats = []
        for r in range(layer["repeat"]):
            p = dict(params)
            if r > 0 and "stride" in p:
                p["stride"] = 1
            try:
                with torch.device("meta"):
                    meta = info.factory(shape, **p)
                new_shape = _out_shape(meta, shape)
            except SpecError as e:  # raised by a factory with a precise message
                raise SpecError(e.problem, layer=i, block=info.name) from None
            except (ValueError, RuntimeError, TypeError, IndexError, ZeroDivisionError) as e:
                raise SpecError(_first_line(e), layer=i, block=info.name) from None
            if any(s < 1 for s in new_shape):
                raise SpecError(f"input {_describe(shape)} gives an empty output {_describe(new_shape)}",
                                layer=i, block=info.name)
            if str(device) != "meta":
                with torch.device(device):
                    meta = info.factory(shape, **p)
            repeats.append(meta)
            shape = new_shape
        module = repeats[0] if len(repeats) == 1 else nn.Sequential(*repeats)
        modules[str(i)] = module
        infos.append(LayerInfo(i, info.name, f"layers.{i}", in_shape, shape, layer["params"],
                               layer["repeat"]))
    if len(shape) != 1:
        raise SpecError(f"the network ends with a {_describe(shape)} feature map; end it with "
                        f"global_avg_pool (or flatten) and linear", layer=len(spec["layers"]) - 1,
                        block=spec["layers"][-1]["block"])
    net = Network(modules, spec, infos)
    return net if str(device) == "meta" else net.to(device)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def to_spec(net: Network) -> dict:
    """The spec a network was built from (build -> to_spec -> build is the identity)."""
    return copy.deepcopy(net.spec)
