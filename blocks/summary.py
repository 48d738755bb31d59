"""Per-layer summary of a spec: output shape, parameters, FLOPs and activation memory.

Receptive fields (size, jump, start) come from blocks.receptive. Everything runs on the meta device, so summarising VGG-11 at 224×224 allocates nothing.
FLOPs are counted by torch.utils.flop_counter (a multiply-add counts as 2 FLOPs), for one
image, forward pass only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import torch.nn.functional as F

from blocks.builder import Network, _ShapeOnly, build
from blocks.receptive import layer_fields

BYTES_PER_ELEMENT = 4  # float32


@dataclass(frozen=True)
class LayerSummary:
    index: int
    block: str
    name: str
    out_shape: tuple[int, ...]
    params: int
    flops: int
    activation_bytes: int  # every intermediate tensor of the layer, one image, float32
    receptive_field: int | None = None  # input pixels a unit sees (None: global, no local field)
    jump: int | float | None = None     # effective stride in input pixels
    start: int | float | None = None    # centre of the first unit's field, in input pixels
    rf_global: bool = False             # also sees every input pixel (SE/CBAM gate, global pool)
    rf_exact: bool = True               # False: an upper bound (transposed conv, adaptive pool)

    @property
    def rf_text(self) -> str:
        """'43', '43 +global', 'global', '≤7' (see blocks.receptive.LayerField.text)."""
        if self.receptive_field is None:
            return "global" if self.rf_global else "—"
        return ("" if self.rf_exact else "≤") + str(self.receptive_field) + \
            (" +global" if self.rf_global else "")


@dataclass(frozen=True)
class Summary:
    name: str
    input: tuple[int, ...]
    classes: int
    params: int
    flops: int
    activation_bytes: int
    layers: list[LayerSummary]

    def as_dict(self) -> dict:
        return asdict(self)


class _ElementwiseShapeOnly(_ShapeOnly):
    """The builder's shape shortcut for element-wise ops, norms and reductions, none of which
    FlopCounterMode counts; linear layers go through so that their FLOPs are counted."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            kwargs = kwargs or {}
            return func(*args, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


def _run_counting(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One forward: the output and the elements of every leaf module's output."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out[0].numel()

    leaves = [m for m in module.modules() if not list(m.children())] or [module]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        y = module(x)
    finally:
        for h in handles:
            h.remove()
    return y, total


def summarize(spec_or_net: dict | Network) -> Summary:
    """Summarise a spec (or a built network, whose spec is used). Raises SpecError."""
    spec = spec_or_net.spec if isinstance(spec_or_net, Network) else spec_or_net
    net = build(spec, device="meta").eval()
    x = torch.empty((1, *net.input_shape), device="meta")
    rows = []
    fields = layer_fields(net)
    with torch.no_grad():
        for info, layer, rf in zip(net.layer_info, net.layers, fields):
            with FlopCounterMode(display=False) as counter, _ElementwiseShapeOnly():
                x, acts = _run_counting(layer, x)
            rows.append(LayerSummary(info.index, info.block, info.name, tuple(x.shape[1:]),
                                     sum(p.numel() for p in layer.parameters()),
                                     int(counter.get_total_flops()), acts * BYTES_PER_ELEMENT,
                                     **rf.as_dict()))
    return Summary(net.spec["name"], tuple(net.spec["input"]), net.spec["classes"],
                   sum(r.params for r in rows), sum(r.flops for r in rows),
                   sum(r.activation_bytes for r in rows), rows)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def format_table(s: Summary) -> str:
    """The summary as a fixed-width text table."""
    head = (f"{'#':>3}  {'block':<20} {'output':<14} {'params':>12} {'FLOPs':>10} {'act. mem':>10} "
            f"{'RF':>12} {'jump':>5}")
    lines = [f"{s.name}: input {'×'.join(map(str, s.input))}, {s.classes} classes", head, "-" * len(head)]
    for r in s.layers:
        lines.append(f"{r.index:>3}  {r.block:<20} {'×'.join(map(str, r.out_shape)):<14} "
                     f"{r.params:>12,} {human(r.flops):>10} {human(r.activation_bytes, 'B'):>10} "
                     f"{r.rf_text:>12} {'' if r.jump is None else r.jump:>5}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<39} {s.params:>12,} {human(s.flops):>10} {human(s.activation_bytes, 'B'):>10}")
    return "\n".join(lines)
