"""Pieces shared by many blocks: activations by name, conv + norm + activation, params."""
from __future__ import annotations

import torch.nn as nn

from blocks.registry import Param, SpecError

ACTIVATIONS = ("relu", "relu6", "swish", "silu", "hardswish", "sigmoid", "hardsigmoid",
               "tanh", "none")


def make_act(name: str) -> nn.Module:
    """An activation module by name; never in-place (Captum needs distinct, pure modules)."""
    return {
        "relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "silu": nn.SiLU,
        "hardswish": nn.Hardswish, "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid,
        "tanh": nn.Tanh, "none": nn.Identity,
    }[name]()


def same_padding(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) // 2


def check_fits(in_shape, kernel: int, dilation: int = 1, padding: int = 0, what: str = "kernel") -> None:
    """Refuse a window larger than the (padded) input with the message users act on."""
    _, h, w = in_shape
    span = dilation * (kernel - 1) + 1
    if min(h, w) + 2 * padding < span:
        need = span - 2 * padding
        raise SpecError(f"input is {h}×{w} but {what} {kernel}"
                        + (f" (dilation {dilation})" if dilation > 1 else "")
                        + (f" with padding {padding}" if padding else "")
                        + f" needs at least {need}×{need}")


def check_groups(c_in: int, c_out: int, groups: int) -> None:
    if c_in % groups or c_out % groups:
        raise SpecError(f"groups={groups} must divide both input channels ({c_in}) "
                        f"and output channels ({c_out})")


class ConvNormAct(nn.Sequential):
    """Conv2d, then optional BatchNorm, then an activation. Bias only without a norm
    unless asked. Names (conv, bn, act) are stable: inspection and exports rely on them."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1,
                 norm: str = "batch", act: str = "relu", bias: bool | None = None):
        super().__init__()
        if padding is None:
            padding = same_padding(kernel, dilation)
        if bias is None:
            bias = norm == "none"
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=bias)
        if norm == "batch":
            self.bn = nn.BatchNorm2d(c_out)
        if act != "none":
            self.act = make_act(act)


# Shared parameter definitions: one name, one meaning across blocks.
def p_out(default: int | None = 64, help: str = "output channels") -> Param:
    return Param("out", "int", default, help, min=1, max=8192, channels=True)


def p_kernel(default: int = 3) -> Param:
    return Param("kernel", "int", default, "kernel size (square)", min=1, max=64)


def p_stride(default: int = 1) -> Param:
    return Param("stride", "int", default, "stride (first repeat only)", min=1, max=16)


def p_padding() -> Param:
    return Param("padding", "int", None, "zero padding; empty = 'same' for stride 1", min=0, max=64,
                 optional=True)


def p_dilation(default: int = 1) -> Param:
    return Param("dilation", "int", default, "spacing between kernel taps (atrous rate)", min=1, max=32)


def p_groups(default: int = 1) -> Param:
    return Param("groups", "int", default, "channel groups (must divide in and out channels)",
                 min=1, max=8192)


def p_act(default: str = "relu") -> Param:
    return Param("act", "str", default, "activation after the block", choices=ACTIVATIONS)


def p_norm(default: str = "batch") -> Param:
    return Param("norm", "str", default, "normalisation after the conv", choices=("batch", "none"))


def p_bias() -> Param:
    return Param("bias", "bool", None, "conv bias; empty = only when there is no norm", optional=True)


ATTENTIONS = ("none", "se", "cbam")


def p_attention(default: str = "none") -> Param:
    return Param("attention", "str", default, "attention after the block's last conv",
                 choices=ATTENTIONS)


def p_reduction(default: int = 16) -> Param:
    return Param("reduction", "int", default, "channel reduction ratio r of the attention MLP",
                 min=1, max=256)
