"""The block-cost lab: every conv variant that maps C_in channels to C_out, side by side.

`block_costs(c_in, c_out, kernel, size)` builds each variant as a one-layer spec through the
block registry and the builder (so its parameters, FLOPs and activation memory are exactly
what `python -m lab summary` prints for that layer, receptive field included) and times it
on a device: forward (eval, no grad) and forward + backward (train mode, gradients of the
parameters and the input), the median of interleaved timed rounds after warm-up runs.

Variants (the handbook's chapter 4.5 plus GhostNet): regular conv, dilated (d = 2), grouped
(every g > 1 dividing both channel counts), pointwise (1×1), depthwise-separable (MobileNets,
Howard et al. 2017), Ghost module (Han et al. 2020; s = 2, 3, 4 and d = 1, 3), transposed, and
the registry's composite blocks that take `out` (residual, inverted residual, Ghost
bottleneck, CoordConv …). With `norm="none"` (the default) convs carry a bias and no
BatchNorm, as in the handbook: 3 → 30 channels, kernel 10 gives 9,030 / 3,030 / 120 / 423.

GhostNet's Eq. 4 (FLOPs) and Eq. 5 (parameters) against a regular k×k conv of n outputs,
for a Ghost module of ratio s and cheap kernel d on c input channels:
    r = c·k² / (c·k²/s + (s−1)/s·d²)   ≈ s
`ghost_ratio` gives it; it is exact for the conv weights and FLOPs when s divides n.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

import blocks
from blocks.summary import summarize
from lab.train.device import choose_device, device_name, synchronize

MAX_CHANNELS = 4096
MAX_SIZE = 512
MAX_KERNEL = 15
MAX_BATCH = 1024


@dataclass(frozen=True)
class Variant:
    """One way to map the input to the output: a registry block with its parameters."""
    label: str
    family: str          # "conv variant" | "ghost" | "registry block"
    block: str
    params: dict
    note: str = ""


@dataclass
class CostRow:
    label: str
    family: str
    block: str
    params: dict
    note: str
    spec: dict                      # the one-layer spec (+ classifier) it was built from
    out_shape: tuple[int, ...]
    parameters: int
    flops: int                      # one image, forward, multiply-add = 2 (as `lab summary`)
    activation_bytes: int           # one image, float32, every intermediate (as `lab summary`)
    receptive_field: int | None     # input pixels a unit sees (blocks.receptive, as `lab summary`)
    receptive_field_text: str       # '10', '5 +global', 'global', '≤7'
    forward_ms: float | None = None
    forward_backward_ms: float | None = None
    ratios: dict = field(default_factory=dict)   # this / regular conv


@dataclass
class CostTable:
    c_in: int
    c_out: int
    kernel: int
    size: int
    stride: int
    norm: str
    batch: int
    device: str
    device_name: str
    repeats: int
    rows: list[CostRow]
    skipped: dict[str, str]

    def as_dict(self) -> dict:
        return asdict(self)

    def row(self, label: str) -> CostRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)


def ghost_ratio(c: int, k: int, s: int, d: int) -> float:
    """GhostNet Eq. 4/5: regular conv cost over Ghost module cost (FLOPs and weights alike)."""
    return c * k * k / (c * k * k / s + (s - 1) / s * d * d)


def _divisors(c_in: int, c_out: int) -> list[int]:
    g = math.gcd(c_in, c_out)
    return [d for d in range(2, g + 1) if g % d == 0]


def variants(c_in: int, c_out: int, kernel: int, stride: int = 1, norm: str = "none",
             max_groups: int = 4) -> list[Variant]:
    """The variants that map c_in to c_out channels with this kernel and stride."""
    act = "none" if norm == "none" else "relu"
    base = {"out": c_out, "kernel": kernel, "stride": stride, "norm": norm, "act": act}
    k = kernel
    out: list[Variant] = [
        Variant("regular conv", "conv variant", "conv", dict(base),
                f"{k}×{k} conv, every output channel sees every input channel"),
        Variant("dilated d=2", "conv variant", "dilated_conv", {**base, "dilation": 2},
                "same weights, taps spaced 2 apart: a wider field"),
    ]
    groups = _divisors(c_in, c_out)
    if len(groups) > max_groups:  # the smallest few and the largest (depthwise when c_in | c_out)
        groups = groups[:max_groups - 1] + groups[-1:]
    for g in groups:
        out.append(Variant(f"grouped g={g}", "conv variant", "grouped_conv", {**base, "groups": g},
                           f"{g} groups of {c_in // g} → {c_out // g} channels (params ÷ {g})"))
    out.append(Variant("pointwise 1×1", "conv variant", "pointwise_conv",
                       {k_: v for k_, v in base.items() if k_ != "kernel"},
                       f"a Linear({c_in}→{c_out}) at every pixel (reshape N×C×H×W → NHW×C, apply, "
                       f"reshape back): mixes channels only, no spatial field"))
    out.append(Variant("depthwise-separable", "conv variant", "depthwise_separable", dict(base),
                       f"{k}×{k} depthwise ({c_in} filters) then 1×1 pointwise"))
    relu = norm != "none"
    for s in (2, 3, 4):
        for d in (1, 3):
            out.append(Variant(f"Ghost s={s} d={d}", "ghost", "ghost_module",
                               {"out": c_out, "kernel": k, "stride": stride, "ratio": s,
                                "dw_kernel": d, "relu": relu},
                               f"⌈{c_out}/{s}⌉ intrinsic maps by the {k}×{k} conv, the rest by "
                               f"{d}×{d} depthwise; BatchNorm inside (GhostNet)"))
    t_stride = max(stride, 1)
    out.append(Variant(f"transposed (stride {t_stride})", "conv variant", "transposed_conv",
                       {"out": c_out, "kernel": k, "stride": t_stride,
                        "padding": max(0, (k - t_stride) // 2), "norm": norm, "act": act},
                       "learnable up-sampling: output (in−1)·stride − 2·pad + kernel"
                       + ("; at stride 1 it is a conv with the kernel flipped" if t_stride == 1 else "")))
    # The registry's other blocks that can take this input to this output.
    reg = [("coord_conv", {**base}, "conv that also sees x, y coordinate channels"),
           ("basic_residual", {"out": c_out, "stride": stride}, "two 3×3 convs + shortcut (BN, ReLU)"),
           ("bottleneck_residual", {"out": c_out, "stride": stride}, "1×1, 3×3, 1×1 + shortcut"),
           ("inverted_residual", {"out": c_out, "stride": stride, "kernel": k},
            "expand 1×1, depthwise, linear 1×1 (MobileNetV2)"),
           ("ghost_bottleneck", {"out": c_out, "stride": stride, "kernel": k, "mid": 2 * c_out},
            "two Ghost modules + shortcut"),
           ("vgg_block", {"out": c_out, "norm": norm, "act": act}, "3×3 conv then 2×2 max-pool")]
    if c_in == c_out:
        reg.insert(0, ("depthwise_conv", {"kernel": k, "stride": stride, "norm": norm, "act": act},
                       "one filter per channel (keeps the channel count)"))
    for name, params, note in reg:
        out.append(Variant(name, "registry block", name, params, note))
    return out


def one_layer_spec(c_in: int, size: int, block: str, params: dict) -> dict:
    """The spec `lab summary --spec` reads for a variant: the block, then a classifier."""
    return {"name": f"cost lab: {block}", "input": [c_in, size, size], "classes": 10,
            "layers": [{"block": block, "params": dict(params)},
                       {"block": "global_avg_pool"}, {"block": "linear"}]}


def _check(name: str, value: int, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def block_costs(c_in: int, c_out: int, kernel: int, size: int, stride: int = 1, norm: str = "none",
                batch: int = 8, device: str = "cpu", repeats: int = 7, warmup: int = 2,
                time_it: bool = True, only: list[str] | None = None,
                progress: Callable[[str], None] | None = None) -> CostTable:
    """One row per variant (see `variants`); `only` keeps the labels listed. Latency is the
    median of `repeats` interleaved rounds (each variant once per round, so a burst of other
    work on a shared machine falls on all of them) after `warmup` untimed calls each."""
    _check("in channels", c_in, 1, MAX_CHANNELS)
    _check("out channels", c_out, 1, MAX_CHANNELS)
    _check("kernel", kernel, 1, MAX_KERNEL)
    _check("size", size, 1, MAX_SIZE)
    _check("stride", stride, 1, 8)
    _check("batch", batch, 1, MAX_BATCH)
    _check("repeats", repeats, 1, 1000)
    if norm not in ("none", "batch"):
        raise ValueError(f"norm must be none or batch, got {norm!r}")
    dev = choose_device(device)
    rows: list[CostRow] = []
    skipped: dict[str, str] = {}
    modules: list[nn.Module] = []
    for v in variants(c_in, c_out, kernel, stride, norm):
        if only is not None and v.label not in only:
            continue
        spec = one_layer_spec(c_in, size, v.block, v.params)
        try:
            summary = summarize(spec)
        except blocks.SpecError as e:
            if v.label == "regular conv":
                raise
            skipped[v.label] = e.problem
            continue
        layer = summary.layers[0]
        torch.manual_seed(0)
        module = blocks.build(spec, device="cpu").layers[0]
        rows.append(CostRow(v.label, v.family, v.block, dict(v.params), v.note, spec,
                            layer.out_shape, layer.params, layer.flops, layer.activation_bytes,
                            layer.receptive_field, layer.rf_text))
        modules.append(module.to(dev))
    if time_it and rows:
        if progress:
            progress(f"timing {len(rows)} variants on {device_name(dev)}")
        fwd, fb = _time_all(modules, (batch, c_in, size, size), dev, repeats, warmup)
        for r, a, b in zip(rows, fwd, fb):
            r.forward_ms, r.forward_backward_ms = a, b
    base = next((r for r in rows if r.label == "regular conv"), None)
    if base is not None:
        for r in rows:
            r.ratios = {k: _ratio(getattr(r, k), getattr(base, k))
                        for k in ("parameters", "flops", "activation_bytes", "forward_ms",
                                  "forward_backward_ms")}
    return CostTable(c_in, c_out, kernel, size, stride, norm, batch, str(dev), device_name(dev),
                     repeats, rows, skipped)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 6)


def _time_all(modules: list[nn.Module], shape: tuple, dev: torch.device, repeats: int,
              warmup: int) -> tuple[list[float], list[float]]:
    """Median milliseconds of forward (eval, no grad) and forward+backward (train) per module."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dev)

    def forward(m: nn.Module) -> None:
        with torch.no_grad():
            m(x)

    def forward_backward(m: nn.Module) -> None:
        xi = x.detach().requires_grad_(True)
        m(xi).sum().backward()
        for p in m.parameters():
            p.grad = None

    out = []
    for fn, train in ((forward, False), (forward_backward, True)):
        for m in modules:
            m.train(train)
            for _ in range(warmup):
                fn(m)
        synchronize(dev)
        times: list[list[float]] = [[] for _ in modules]
        for _ in range(repeats):
            for i, m in enumerate(modules):
                t = time.perf_counter()
                fn(m)
                synchronize(dev)
                times[i].append(time.perf_counter() - t)
        out.append([round(1000 * statistics.median(t), 4) for t in times])
    for m in modules:
        m.eval()
    return out[0], out[1]


def cost_records(table: CostTable) -> list[dict[str, Any]]:
    """The rows as flat dicts (what the chart and the app's table read)."""
    return [{"label": r.label, "family": r.family, "block": r.block, "out_shape": list(r.out_shape),
             "parameters": r.parameters, "flops": r.flops, "activation_bytes": r.activation_bytes,
             "receptive_field": r.receptive_field,
             "receptive_field_text": r.receptive_field_text, "forward_ms": r.forward_ms,
             "forward_backward_ms": r.forward_backward_ms, "ratios": r.ratios, "note": r.note}
            for r in table.rows]
