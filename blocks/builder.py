"""Spec -> nn.Module. The builder threads the shape through the stack.

A spec is plain JSON (see DESIGN.md). The user never writes input channels or a Linear's
in_features; a `linear` without `out` maps to `classes`; `width` scales every channel
parameter; for a repeated layer, `stride` applies to its first repeat only (as in ResNet's
stages). Anything that cannot be built raises `SpecError` naming the layer and block.
"""
from __future__ import annotations

import copy
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from blocks.registry import BlockInfo, Shape, SpecError, get_block, short_repr

MAX_LAYERS = 1000          # after expanding repeats
MAX_REPEAT = 100
MAX_CHANNELS_IN = 64
MAX_SIDE = 2048
MAX_CLASSES = 100_000
# Bounds on what one spec may ask for, so that checking any spec stays well under 2 s and
# building one never exhausts memory: leaf modules (torchvision's DenseNet-201 has 606,
# ResNet-152 364) and parameters (VGG-16 has 138 M; 500 M float32 weights are 2 GB).
MAX_MODULES = 1000
MAX_PARAMETERS = 500_000_000
MAX_SPEC_BYTES = 5 * 1024 * 1024   # spec text, see load_spec_text
MAX_JSON_DEPTH = 64
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
        raise SpecError(f"unknown spec key(s) {_keys(unknown)}; "
                        f"allowed: {', '.join(sorted(SPEC_KEYS))}")
    out = {"name": spec.get("name", "network")}
    if not isinstance(out["name"], str) or len(out["name"]) > 200:
        raise SpecError("'name' must be a string of at most 200 characters")
    shape = spec.get("input", [3, 32, 32])
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
        raise SpecError(f"'input' must be [channels, height, width] as integers, "
                        f"got {short_repr(shape)}")
    c, h, w = shape
    if not (1 <= c <= MAX_CHANNELS_IN and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise SpecError(f"'input' {'×'.join(map(short_repr, shape))} is out of range: "
                        f"channels 1..{MAX_CHANNELS_IN}, sides 1..{MAX_SIDE}")
    out["input"] = [c, h, w]
    classes = spec.get("classes", 10)
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= MAX_CLASSES:
        raise SpecError(f"'classes' must be an integer from 1 to {MAX_CLASSES}, "
                        f"got {short_repr(classes)}")
    out["classes"] = classes
    width = spec.get("width", 1.0)
    # `0 < width <= 4` first: math.isfinite overflows on huge JSON integers
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4 \
            or not math.isfinite(width):
        raise SpecError(f"'width' must be a number in (0, 4], got {short_repr(width)}")
    out["width"] = float(width)
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError("'layers' must be a non-empty list of layers")
    if len(layers) > MAX_LAYERS:
        first_extra = layers[MAX_LAYERS]
        block = first_extra.get("block") if isinstance(first_extra, dict) else None
        raise SpecError(f"the spec has {len(layers)} layers; at most {MAX_LAYERS} are allowed",
                        layer=MAX_LAYERS, block=block if _is_block(block) else None)
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


def _is_block(name: Any) -> bool:
    try:
        return isinstance(name, str) and get_block(name) is not None
    except KeyError:
        return False


def _keys(keys) -> str:
    """Unknown keys for a message: quoted, sorted, at most five."""
    names = sorted(short_repr(k, 40) for k in keys)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _normalize_layer(i: int, layer: Any) -> dict:
    if not isinstance(layer, dict):
        raise SpecError(f"a layer must be an object like {{\"block\": \"conv\"}}, got {short_repr(layer)}",
                        layer=i)
    name = layer.get("block")
    if not isinstance(name, str):
        raise SpecError("missing 'block' name", layer=i)
    try:
        info = get_block(name)
    except KeyError:
        raise SpecError(f"unknown block {short_repr(name)}; `python -m lab blocks` lists them",
                        layer=i) from None
    unknown = set(layer) - LAYER_KEYS
    if unknown:
        raise SpecError(f"unknown layer key(s) {_keys(unknown)}; "
                        f"allowed: block, params, repeat", layer=i, block=name)
    params = layer.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise SpecError("'params' must be an object", layer=i, block=name)
    allowed = {p.name for p in info.params}
    bad = [k for k in params if k not in allowed]
    if bad:
        hint = f"allowed: {', '.join(sorted(allowed))}" if allowed else "it takes no parameters"
        raise SpecError(f"unknown parameter {_keys(bad[:1])}; {hint}", layer=i, block=name)
    clean = {}
    for p in info.params:
        try:
            clean[p.name] = p.validate(params.get(p.name, p.default))
        except ValueError as e:
            raise SpecError(str(e), layer=i, block=name) from None
    repeat = layer.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_REPEAT:
        raise SpecError(f"'repeat' must be an integer from 1 to {MAX_REPEAT}, got {short_repr(repeat)}",
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


_SAME_SHAPE = {F.relu, torch.relu, F.relu6, F.hardtanh, F.silu, F.hardswish, F.hardsigmoid,
               torch.sigmoid, torch.tanh, torch.sqrt, F.dropout}
_REDUCE = {torch.Tensor.mean, torch.mean, torch.Tensor.amax, torch.amax}
_BROADCAST = {torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__add__,
              torch.Tensor.__radd__, torch.mul, torch.add, torch.Tensor.mul, torch.Tensor.add}


class _ShapeOnly(TorchFunctionMode):
    """Shortcut the meta ops whose output shape is obvious. PyTorch computes meta
    elementwise ops, reductions, batch norm and linear through Python reference code
    (~1-3 ms each), which made checking a DenseNet-sized spec take seconds; only shapes
    matter here, so these return an empty meta tensor of the right shape after the same
    shape checks."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.is_meta:
            if func in _SAME_SHAPE:
                return torch.empty(x.shape, dtype=x.dtype, device="meta")
            if func is F.batch_norm:
                c = x.shape[1] if x.dim() > 1 else -1
                stats = list(args[1:5]) + [kwargs.get(k) for k in
                                           ("running_mean", "running_var", "weight", "bias")]
                for t in stats:
                    if isinstance(t, torch.Tensor) and t.numel() != c:
                        raise RuntimeError(f"batch norm over {c} channels has {t.numel()} statistics")
                return torch.empty(x.shape, dtype=x.dtype, device="meta")
            if func is F.linear and len(args) >= 2 and x.dim() >= 1:
                weight, bias = args[1], args[2] if len(args) > 2 else kwargs.get("bias")
                if x.shape[-1] != weight.shape[1] or (bias is not None and bias.numel() != weight.shape[0]):
                    raise RuntimeError(f"linear with {weight.shape[1]} inputs receives {x.shape[-1]}")
                return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device="meta")
            if func in _REDUCE and set(kwargs) <= {"dim", "keepdim"} and len(args) <= 3:
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
                keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
                if isinstance(dim, int) and not isinstance(dim, bool):
                    dim = (dim,)
                if isinstance(dim, (tuple, list)) and dim and x.dim() > 0 and \
                        all(isinstance(d, int) and -x.dim() <= d < x.dim() for d in dim):
                    dims = {d % x.dim() for d in dim}
                    shape = [1 if i in dims else s for i, s in enumerate(x.shape)
                             if keep or i not in dims]
                    return torch.empty(shape, dtype=x.dtype, device="meta")
            if func in _BROADCAST and len(args) == 2 and not kwargs:
                other = args[1]
                shape = torch.broadcast_shapes(x.shape, other.shape if isinstance(other, torch.Tensor) else ())
                return torch.empty(shape, dtype=x.dtype, device="meta")
        return func(*args, **kwargs)


def _out_shape(module: nn.Module, in_shape: Shape) -> Shape:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), _ShapeOnly():
            y = module(torch.empty((2, *in_shape), device="meta"))
    finally:
        module.train(was_training)
    if not isinstance(y, torch.Tensor):
        raise ValueError("the block returned no tensor")
    return tuple(int(s) for s in y.shape[1:])


def _freeze(params: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


def _count(module: nn.Module) -> tuple[int, int]:
    """(leaf modules, parameters) of a module."""
    leaves = sum(1 for m in module.modules() if next(m.children(), None) is None)
    return leaves, sum(p.numel() for p in module.parameters())


def _human(n: int) -> str:
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


def _describe(shape: Shape) -> str:
    return "×".join(map(str, shape))


def build(spec: Any, device: str | torch.device = "cpu") -> Network:
    """Build a spec into a `Network` on `device` ("meta" builds without memory)."""
    spec = normalize_spec(spec)
    width, classes = spec["width"], spec["classes"]
    shape: Shape = tuple(spec["input"])
    modules: "OrderedDict[str, nn.Module]" = OrderedDict()
    infos: list[LayerInfo] = []
    shapes: dict[tuple, Shape] = {}  # (block, params, in shape) -> out shape: repeats are free
    n_modules = n_params = 0
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
            key = (info.name, _freeze(p), shape)
            try:
                with torch.device("meta"):
                    meta = info.factory(shape, **p)
                # the budget before the (costlier) shape inference
                leaves, weights = _count(meta)
                n_modules, n_params = n_modules + leaves, n_params + weights
                if n_modules > MAX_MODULES:
                    raise SpecError(f"the network reaches {n_modules:,} modules here; at most "
                                    f"{MAX_MODULES:,} are allowed (fewer repeats or dense layers)")
                if n_params > MAX_PARAMETERS:
                    raise SpecError(f"the network reaches {_human(n_params)} parameters here; at "
                                    f"most {_human(MAX_PARAMETERS)} are allowed (lower the channels "
                                    f"or width)")
                new_shape = shapes.get(key) or _out_shape(meta, shape)
            except SpecError as e:  # raised by a factory with a precise message
                raise SpecError(e.problem, layer=i, block=info.name) from None
            except (ValueError, RuntimeError, TypeError, IndexError, ZeroDivisionError) as e:
                raise SpecError(_first_line(e), layer=i, block=info.name) from None
            if any(s < 1 for s in new_shape):
                raise SpecError(f"input {_describe(shape)} gives an empty output {_describe(new_shape)}",
                                layer=i, block=info.name)
            shapes[key] = new_shape
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
    if shape[0] != classes:
        raise SpecError(f"the network ends with {shape[0]} outputs but there are {classes} classes; "
                        f"leave the last linear's 'out' empty so it follows the classes",
                        layer=len(spec["layers"]) - 1, block=spec["layers"][-1]["block"])
    net = Network(modules, spec, infos)
    return net if str(device) == "meta" else net.to(device)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def to_spec(net: Network) -> dict:
    """The spec a network was built from (build -> to_spec -> build is the identity)."""
    return copy.deepcopy(net.spec)


# A JSON string, unterminated ones included (so that the scan stays linear on any text).
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _json_depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings, without recursion (json.loads recurses)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    if not brackets:
        return 0
    codes = torch.frombuffer(bytearray(brackets), dtype=torch.uint8)
    steps = torch.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(steps.cumsum(0).max())


def load_spec_text(text: str | bytes) -> Any:
    """Parse a spec file's text; refuse anything over 5 MB, nested over 64 levels deep or not
    JSON, with a SpecError. The result still goes through `build`/`normalize_spec`."""
    if isinstance(text, (bytes, bytearray)):
        size = len(text)
    elif isinstance(text, str):
        size = len(text) if len(text) > MAX_SPEC_BYTES else len(text.encode("utf-8", "surrogatepass"))
    else:
        raise SpecError(f"a spec file must be text, got {type(text).__name__}")
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"spec file is {size / 2 ** 20:.1f} MB; the limit is {MAX_SPEC_BYTES // 2 ** 20} MB")
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SpecError(f"spec file is not UTF-8 text: byte {e.start}") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise SpecError(f"spec is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"spec is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise SpecError("spec is not valid JSON: a number has more than 4,300 digits") from None
