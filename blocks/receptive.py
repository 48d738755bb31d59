"""Receptive fields of every layer: size, jump (effective stride) and start (centre of the
first output unit's field), read from the built modules.

Araujo, Norris & Sim 2019, "Computing Receptive Fields of Convolutional Neural Networks"
(Distill): a k×k conv with stride s, padding p and dilation d maps a field of size r, jump j
and start c to r + d(k−1)·j, j·s and c + (d(k−1)/2 − p)·j. We track the field as the span
[lo, hi] of input pixels that output unit 0 sees, which makes every rule affine in the block's
input field, so one pass over a block's fx graph (blocks.graph.trace) with the identity field
gives a transform that composes layer by layer. Where branches meet (add, mul, cat) the field
is the union of the branches' spans — the largest field over all paths, as Araujo et al.
define it for multi-branch networks — so a new block needs no new code.

Global operations (a spatial mean or max: SE and CBAM gates, global pooling; flattening into
a linear layer) make a unit depend on every input pixel: the field then carries `global_`,
and a layer whose output has no spatial extent left (after global_avg_pool, linear) has no
local field at all. A transposed conv (stride > 1) or an adaptive pool gives a field that
varies from unit to unit; we report a bound that holds for every unit and mark it inexact.
"""
from __future__ import annotations

import json
import operator
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from fractions import Fraction

import torch
import torch.fx as fx
import torch.nn as nn

from blocks.graph import _flat, merge_name, trace
from blocks.registry import Shape


@dataclass(frozen=True)
class Field:
    """The input pixels output unit 0 sees along one axis: [lo, hi] (None: no local field,
    the unit depends on the input only through a global operation), the jump between
    neighbouring units, and whether every input pixel also reaches it (`global_`)."""
    lo: Fraction | None = Fraction(0)
    hi: Fraction | None = Fraction(0)
    jump: Fraction = Fraction(1)
    global_: bool = False
    flat: bool = False          # the output has no spatial axes left
    exact: bool = True          # False: an upper bound (transposed conv, adaptive pooling)

    @property
    def size(self) -> int | None:
        """Receptive field size in input pixels (an upper bound when not exact)."""
        if self.lo is None or self.flat:
            return None
        r = self.hi - self.lo + 1
        return int(r) if r.denominator == 1 else int(r) + 1

    @property
    def start(self) -> float | None:
        """Centre of output unit 0's field in input pixel coordinates (Araujo et al.'s start)."""
        if self.lo is None or self.flat:
            return None
        return _num((self.lo + self.hi) / 2)

    def then(self, t: "Field") -> "Field":
        """This field followed by a block whose transform (its field for the identity input) is `t`."""
        lo = hi = None
        if self.lo is not None and t.lo is not None:
            lo, hi = self.lo + t.lo * self.jump, self.hi + t.hi * self.jump
        return Field(lo, hi, self.jump * t.jump, self.global_ or t.global_, t.flat,
                     self.exact and t.exact)

    def span(self, unit: int) -> tuple[float, float] | None:
        """[first, last] input pixel (unclipped) that output unit `unit` sees."""
        if self.lo is None or self.flat:
            return None
        return _num(self.lo + unit * self.jump), _num(self.hi + unit * self.jump)


def _num(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


def _union(fields: list[Field]) -> Field | None:
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    local = [f for f in fields if f.lo is not None and not f.flat]
    jumps = {f.jump for f in local} or {fields[0].jump}
    lo = min((f.lo for f in local), default=None)
    hi = max((f.hi for f in local), default=None)
    return Field(lo, hi, max(jumps), any(f.global_ for f in fields), all(f.flat for f in fields),
                 all(f.exact for f in fields) and len(jumps) == 1)


def _pair(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def _window(f: Field, k: int, s: int, p: int, d: int) -> Field:
    if f.lo is None:
        return replace(f, jump=f.jump * s)
    return replace(f, lo=f.lo - p * f.jump, hi=f.hi + (d * (k - 1) - p) * f.jump, jump=f.jump * s)


def _spatial(shape: tuple | None) -> tuple | None:
    return tuple(shape[1:]) if shape is not None and len(shape) == 3 else None


def _by_shape(f: Field, in_shape: tuple | None, out_shape: tuple | None) -> Field:
    """An operation known only by its shapes: same H×W -> pointwise; H×W reduced to 1×1 or
    gone -> global; any other change -> a global, inexact bound."""
    sin, sout = _spatial(in_shape), _spatial(out_shape)
    if sin is None:  # already flat (or unknown): stays what it was
        return f if out_shape is None or len(out_shape) != 3 else replace(f, flat=False)
    if sout == sin:
        return f
    if sout is None:  # flattened or reduced away
        if sin == (1, 1):
            return replace(f, flat=True)
        return replace(f, flat=True, global_=True)
    if sout == (1, 1):
        return replace(f, lo=None, hi=None, global_=True)
    return replace(f, global_=True, exact=False)


def _leaf(m: nn.Module, f: Field, in_shape, out_shape) -> Field:
    if isinstance(m, nn.Conv2d):
        k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        p = m.padding
        if isinstance(p, str):
            p = d * (k - 1) // 2 if p == "same" else 0
        return _window(f, k, s, _pair(p), d)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        d = _pair(getattr(m, "dilation", 1))
        return _window(f, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), d)
    if isinstance(m, nn.ConvTranspose2d):
        k, s, d, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation), _pair(m.padding)
        # output unit o sees input units i with o + p − d(k−1) <= s·i <= o + p
        if f.lo is None:
            return replace(f, jump=f.jump / s)
        return replace(f, lo=f.lo + Fraction(p - d * (k - 1), s) * f.jump, hi=f.hi + Fraction(p, s) * f.jump,
                       jump=f.jump / s, exact=f.exact and s == 1)
    if isinstance(m, nn.Linear):
        return replace(f, lo=None, hi=None, global_=True, flat=True)
    return _by_shape(f, in_shape, out_shape)


def block_transform(module: nn.Module, in_shape: Shape) -> Field:
    """A block's field for the identity input field (one pixel, jump 1): compose it onto the
    field of the block's input with `Field.then`. Raises ValueError if the block cannot be traced."""
    t = trace(module, in_shape)
    if t.graph is None:
        raise ValueError(f"cannot trace {type(module).__name__}: {t.error}")
    modules = dict(t.module.named_modules())
    fields: dict[str, Field | None] = {}
    shapes = t.shapes
    cat_parts: dict[str, list[tuple[int, Field | None]]] = {}
    out = None
    for n in t.graph.nodes:
        args = [a for a in _flat(list(n.args) + list(n.kwargs.values())) if isinstance(a, fx.Node)]
        if n.op == "placeholder":
            shapes.setdefault(n.name, tuple(in_shape))
            fields[n.name] = Field()
            continue
        if n.op == "get_attr":
            fields[n.name] = None
            continue
        if n.op == "output":
            out = _union([fields.get(a.name) for a in args])
            break
        f_in = _union([fields.get(a.name) for a in args])
        in_shape_n = shapes.get(args[0].name) if args else None
        out_shape_n = shapes.get(n.name)
        if f_in is None:  # built from constants only (coordinates, sizes)
            fields[n.name] = None
            continue
        if n.op == "call_module":
            fields[n.name] = _leaf(modules[str(n.target)], f_in, in_shape_n, out_shape_n)
        elif merge_name(n):
            fields[n.name] = f_in
            if merge_name(n) == "cat" and _cat_dim(n) == 1:
                cat_parts[n.name] = [(shapes.get(a.name, (0,))[0], fields.get(a.name))
                                     for a in _flat(n.args[0]) if isinstance(a, fx.Node)]
        elif n.target is operator.getitem and args and args[0].name in cat_parts:
            fields[n.name] = _channel_slice(n, cat_parts[args[0].name], f_in)
        else:
            fields[n.name] = _by_shape(f_in, in_shape_n, out_shape_n)
    if out is None:
        raise ValueError(f"{type(module).__name__} returns no tensor computed from its input")
    return out


def _cat_dim(n: fx.Node) -> int:
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    return dim if isinstance(dim, int) else 0


def _channel_slice(n: fx.Node, parts: list[tuple[int, Field | None]], whole: Field) -> Field:
    """x[:, a:b] of a channel concatenation: the union of the parts it keeps (GhostNet's
    cut to n channels may drop every ghost)."""
    idx = n.args[1]
    if not (isinstance(idx, tuple) and len(idx) >= 2 and idx[0] == slice(None)
            and isinstance(idx[1], slice) and idx[1].step in (None, 1)):
        return whole
    total = sum(c for c, _ in parts)
    a, b, _ = idx[1].indices(total)
    kept, pos = [], 0
    for c, f in parts:
        if pos < b and pos + c > a:
            kept.append(f)
        pos += c
    return _union(kept) or whole


# ----------------------------------------------------------------------------- networks

@dataclass(frozen=True)
class LayerField:
    """A layer's receptive field in input pixels (square kernels: one number per axis)."""
    receptive_field: int | None   # None: no local field left (global pooling, linear)
    jump: int | float | None      # effective stride in input pixels
    start: int | float | None     # centre of the first unit's field (may be negative or x.5)
    global_: bool                 # also depends on every input pixel (SE/CBAM gate, pooling)
    exact: bool                   # False: an upper bound (transposed conv, adaptive pooling)
    field: Field

    def as_dict(self) -> dict:
        return {"receptive_field": self.receptive_field, "jump": self.jump, "start": self.start,
                "rf_global": self.global_, "rf_exact": self.exact}

    def text(self) -> str:
        """'43', '43 +global', 'global', '≤7'."""
        if self.receptive_field is None:
            return "global" if self.global_ else "—"
        head = ("" if self.exact else "≤") + str(self.receptive_field)
        return head + (" +global" if self.global_ else "")


def layer_field(f: Field) -> LayerField:
    if f.lo is None or f.flat:
        return LayerField(None, None, None, f.global_, f.exact, f)
    return LayerField(f.size, _num(f.jump), f.start, f.global_, f.exact, f)


_CACHE: "OrderedDict[tuple, Field]" = OrderedDict()  # pure results: a layer's spec -> transform
_CACHE_SIZE = 1024
_CACHE_LOCK = threading.Lock()  # the app summarises for several visitors at once


def _layer_transform(net, info, layer: nn.Module) -> Field:
    key = (info.block, json.dumps(info.params, sort_keys=True), info.repeat, tuple(info.in_shape),
           tuple(info.out_shape), net.spec.get("width"), net.spec.get("classes"))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        hit = block_transform(layer, info.in_shape)
        with _CACHE_LOCK:
            _CACHE[key] = hit
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return hit


def layer_fields(net) -> list[LayerField]:
    """The receptive field after every layer of a built `Network` (any device). A layer's
    transform depends only on its spec and input shape, so it is remembered across calls."""
    acc, out = Field(), []
    for info, layer in zip(net.layer_info, net.layers):
        acc = acc.then(_layer_transform(net, info, layer))
        out.append(layer_field(acc))
    return out


def receptive_field(module_or_spec, input_shape: Shape | None = None) -> LayerField:
    """The receptive field of a module's output (with `input_shape`, C×H×W), or of a spec's
    last layer that still has a spatial field (a spec or a built Network; the spec's input).

    >>> receptive_field(nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1)] * 3), (1, 32, 32)).receptive_field
    7
    """
    from blocks.builder import Network, build
    if isinstance(module_or_spec, dict):
        module_or_spec = build(module_or_spec, device="meta")
    if isinstance(module_or_spec, Network):
        fields = layer_fields(module_or_spec)
        local = [f for f in fields if f.receptive_field is not None]
        return local[-1] if local else fields[-1]
    if input_shape is None:
        raise ValueError("receptive_field(module, input_shape): input_shape (C, H, W) is needed")
    return layer_field(block_transform(module_or_spec, tuple(input_shape)))
