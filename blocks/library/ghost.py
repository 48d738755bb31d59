"""GhostNet's Ghost module and Ghost bottleneck (Han et al. 2020, "GhostNet: More Features
from Cheap Operations")."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from blocks.library.attention import CBAM, SqueezeExcite
from blocks.library.common import ATTENTIONS, check_fits, p_kernel, p_out, p_stride
from blocks.registry import Param, SpecError, register


def make_divisible(v: float, divisor: int = 4) -> int:
    """Round to the nearest multiple of `divisor`, never down by more than 10% (as in
    MobileNet/GhostNet's reference code)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class GhostModule(nn.Module):
    """Ghost module (Sec. 3.1): a primary conv makes m = ⌈n/s⌉ intrinsic maps; a cheap depthwise
    d×d conv makes s−1 ghosts of each; the output is their concatenation cut to n channels.
    `forward_parts` returns the intrinsic and ghost maps separately for inspection; ghost
    channel j·(s−1)+t is made from intrinsic channel j."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, ratio: int = 2, dw_kernel: int = 3,
                 stride: int = 1, relu: bool = True):
        super().__init__()
        self.c_out, self.ratio = c_out, ratio
        init = math.ceil(c_out / ratio)
        act = nn.ReLU if relu else nn.Identity
        self.primary = nn.Sequential(
            nn.Conv2d(c_in, init, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(init), act())
        self.cheap = nn.Sequential(
            nn.Conv2d(init, init * (ratio - 1), dw_kernel, 1, dw_kernel // 2, groups=init, bias=False),
            nn.BatchNorm2d(init * (ratio - 1)), act())

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        intrinsic = self.primary(x)
        return intrinsic, self.cheap(intrinsic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic, ghost = self.forward_parts(x)
        return torch.cat([intrinsic, ghost], dim=1)[:, :self.c_out]


@register("ghost_module", "convolution",
          [p_out(), Param("kernel", "int", 1, "primary conv kernel", min=1, max=15), p_stride(),
           Param("ratio", "int", 2, "s: each intrinsic map yields s−1 ghosts", min=2, max=16),
           Param("dw_kernel", "int", 3, "cheap depthwise conv kernel d", min=1, max=15),
           Param("relu", "bool", True, "ReLU after both convs")],
          "Ghost module: a few intrinsic maps from a conv, the rest as cheap depthwise 'ghosts'.",
          "Han et al. 2020, GhostNet: More Features from Cheap Operations", inspect=("ghost",))
def ghost_module(in_shape, out, kernel, stride, ratio, dw_kernel, relu):
    check_fits(in_shape, kernel, 1, kernel // 2)
    if dw_kernel % 2 == 0:  # ghosts must keep the intrinsic maps' size to be concatenated
        raise SpecError(f"'dw_kernel' must be odd, got {dw_kernel}")
    return GhostModule(in_shape[0], out, kernel, ratio, dw_kernel, stride, relu)


def _conv_bn(c_in: int, c_out: int, relu: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU() if relu else nn.Identity())


class GhostBottleneck(nn.Module):
    """Ghost bottleneck (Fig. 3): Ghost module (expand, ReLU) -> depthwise k×k stride-2 conv +
    BN when stride is 2 -> optional attention -> Ghost module (project, no ReLU), plus a shortcut
    (identity, or depthwise conv + 1×1 conv when shape changes). SE is GhostNet's variant:
    hard-sigmoid gate, squeeze to a multiple of 4 of mid/reduction."""

    def __init__(self, c_in, mid, c_out, kernel=3, stride=1, attention="none", reduction=4,
                 ghost=True):
        super().__init__()
        # ghost=False: the regular 1×1 conv + BN (+ ReLU) each Ghost module stands for (Sec. 3.1),
        # for ablations
        self.ghost1 = GhostModule(c_in, mid, relu=True) if ghost else _conv_bn(c_in, mid, True)
        self.dw = None
        if stride > 1:
            self.dw = nn.Sequential(nn.Conv2d(mid, mid, kernel, stride, (kernel - 1) // 2, groups=mid,
                                              bias=False), nn.BatchNorm2d(mid))
        self.attn = None
        if attention == "se":
            self.attn = SqueezeExcite(mid, gate="hardsigmoid", squeeze=make_divisible(mid / reduction, 4))
        elif attention == "cbam":
            self.attn = CBAM(mid, reduction)
        self.ghost2 = GhostModule(mid, c_out, relu=False) if ghost else _conv_bn(mid, c_out, False)
        self.shortcut = None
        if stride > 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_in, kernel, stride, (kernel - 1) // 2, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost1(x)
        if self.dw is not None:
            y = self.dw(y)
        if self.attn is not None:
            y = self.attn(y)
        y = self.ghost2(y)
        return y + (x if self.shortcut is None else self.shortcut(x))


@register("ghost_bottleneck", "composite",
          [p_out(16), Param("mid", "int", 48, "expansion channels", min=1, max=8192, channels=True),
           p_kernel(3), Param("stride", "int", 1, "1 or 2 (first repeat only)", min=1, max=2),
           Param("attention", "str", "none", "attention on the expanded maps", choices=ATTENTIONS),
           Param("reduction", "int", 4, "attention reduction ratio", min=1, max=256),
           Param("ghost", "bool", True, "Ghost modules; false: the regular 1×1 convs they replace")],
          "Ghost bottleneck: two Ghost modules with a residual, GhostNet's building block.",
          "Han et al. 2020, GhostNet", inspect=("ghost", "se", "cbam"))
def ghost_bottleneck(in_shape, out, mid, kernel, stride, attention, reduction, ghost):
    if stride > 1:
        check_fits(in_shape, kernel, 1, (kernel - 1) // 2)
    if kernel % 2 == 0:
        raise SpecError(f"'kernel' must be odd, got {kernel}")
    return GhostBottleneck(in_shape[0], mid, out, kernel, stride, attention, reduction, ghost)
