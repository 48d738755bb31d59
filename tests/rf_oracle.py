"""The receptive-field tests' oracle: the input pixels whose gradient is non-zero for a centre
output unit, in float64.

A trained or random network's gradient can vanish where the unit does depend on a pixel (a
ReLU that is off, a max-pool or amax that routes the gradient to one element, a saturated
ReLU6 or sigmoid), so the oracle runs the same modules — the same convs with their padding,
stride and dilation, the same branches and merges — with all weights positive, BatchNorm the
identity, every point-wise activation replaced by a positive rescaling (z / max z, detached)
and every max by an average over the same window. Every path then carries a positive
gradient, and the gradient's support is exactly the set of pixels the unit depends on.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_ACTS = {F.relu, torch.relu, F.relu6, F.hardtanh, F.silu, F.hardswish, F.hardsigmoid,
         torch.sigmoid, torch.Tensor.sigmoid, torch.tanh, F.gelu, F.elu, F.leaky_relu}
_MAXPOOL = {F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices}
_AMAX = {torch.amax, torch.Tensor.amax}


class Linearised(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ACTS:
            z = args[0]
            return z / z.detach().abs().amax().clamp_min(1e-30)
        if func in _MAXPOOL:
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            a = dict(zip(names, args[1:]), **kwargs)
            k = a["kernel_size"]
            assert a.get("dilation", 1) in (1, (1, 1)), "dilated max pool"
            return F.avg_pool2d(args[0], k, a.get("stride") or k, a.get("padding", 0),
                                ceil_mode=bool(a.get("ceil_mode", False)), count_include_pad=True)
        if func in _AMAX:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            return torch.mean(args[0], dim=dim, keepdim=keep)
        return func(*args, **kwargs)


def positive_copy(layers: nn.Module) -> nn.Module:
    """A float64 eval-mode copy with positive weights and identity BatchNorm."""
    m = copy.deepcopy(layers).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.fill_(1.0), mod.bias.zero_()
                mod.running_mean.zero_(), mod.running_var.fill_(1.0)
            elif hasattr(mod, "weight") and isinstance(mod.weight, torch.Tensor) and mod.weight.dim() > 1:
                w = mod.weight
                fan_in = w[0].numel() if not isinstance(mod, nn.ConvTranspose2d) else w.shape[0]
                w.copy_((0.5 + 0.5 * torch.rand(w.shape, generator=g, dtype=w.dtype)) / fan_in)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
    return m


def supports(net, input_shape=None, whole: bool = False) -> list[torch.Tensor]:
    """For each layer of a built Network (CPU): a boolean H×W map of the input pixels whose
    gradient is non-zero for the layer's centre unit (all channels summed); for a layer
    without spatial axes, or with `whole`, the map for the sum of all its outputs."""
    layers = positive_copy(net.layers)
    shape = tuple(input_shape or net.input_shape)
    x = (0.5 + 0.5 * torch.rand((1, *shape), generator=torch.Generator().manual_seed(1),
                                dtype=torch.float64)).requires_grad_(True)
    outs = []
    with Linearised():
        y = x
        for layer in layers:
            y = layer(y)
            outs.append(y)
    maps = []
    for i, y in enumerate(outs):
        if y.dim() == 4 and not whole:
            unit = y[0, :, (y.shape[2] - 1) // 2, (y.shape[3] - 1) // 2].sum()
        else:
            unit = y.sum()
        (g,) = torch.autograd.grad(unit, x, retain_graph=i < len(outs) - 1)
        maps.append(g[0].abs().sum(0) != 0)
    return maps


def bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(first row, last row, first col, last col) of the True pixels."""
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
