"""Convolutions: standard, pointwise, depthwise, depthwise-separable, grouped, dilated,
transposed and CoordConv."""
from __future__ import annotations

import torch
import torch.nn as nn

from blocks.library.common import (ConvNormAct, check_fits, check_groups, p_act, p_bias,
                                   p_dilation, p_groups, p_kernel, p_norm, p_out, p_padding,
                                   p_stride, same_padding)
from blocks.registry import Param, SpecError, register


def _conv(in_shape, out, kernel, stride, padding, dilation, groups, norm, act, bias):
    pad = same_padding(kernel, dilation) if padding is None else padding
    check_fits(in_shape, kernel, dilation, pad)
    check_groups(in_shape[0], out, groups)
    return ConvNormAct(in_shape[0], out, kernel, stride, pad, dilation, groups, norm, act, bias)


@register("conv", "convolution",
          [p_out(), p_kernel(), p_stride(), p_padding(), p_dilation(), p_groups(), p_norm(), p_act(),
           p_bias()],
          "Convolution + optional BatchNorm + activation: the workhorse layer.",
          "LeCun et al. 1998; Ioffe & Szegedy 2015 (BatchNorm)")
def conv(in_shape, out, kernel, stride, padding, dilation, groups, norm, act, bias):
    return _conv(in_shape, out, kernel, stride, padding, dilation, groups, norm, act, bias)


@register("pointwise_conv", "convolution", [p_out(), p_stride(), p_norm(), p_act(), p_bias()],
          "1×1 convolution: mixes channels at each pixel, changes channel count cheaply.",
          "Lin et al. 2013, Network in Network")
def pointwise_conv(in_shape, out, stride, norm, act, bias):
    return ConvNormAct(in_shape[0], out, 1, stride, 0, 1, 1, norm, act, bias)


@register("depthwise_conv", "convolution",
          [p_kernel(), p_stride(), p_padding(), p_dilation(), p_norm(), p_act(), p_bias()],
          "Depthwise convolution: one filter per channel (groups = channels); keeps channels.",
          "Howard et al. 2017, MobileNets")
def depthwise_conv(in_shape, kernel, stride, padding, dilation, norm, act, bias):
    c = in_shape[0]
    return _conv(in_shape, c, kernel, stride, padding, dilation, c, norm, act, bias)


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k conv then pointwise 1×1 conv (MobileNetV1, Howard et al. 2017, Fig. 3):
    each followed by BN and the activation when norm='batch'."""

    def __init__(self, c_in, c_out, kernel=3, stride=1, padding=None, dilation=1,
                 norm="batch", act="relu", bias=None):
        super().__init__()
        self.depthwise = ConvNormAct(c_in, c_in, kernel, stride, padding, dilation, c_in, norm, act, bias)
        self.pointwise = ConvNormAct(c_in, c_out, 1, 1, 0, 1, 1, norm, act, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


@register("depthwise_separable", "convolution",
          [p_out(), p_kernel(), p_stride(), p_padding(), p_dilation(), p_norm(), p_act(), p_bias()],
          "Depthwise then pointwise conv: ~k² times fewer multiply-adds than a standard conv.",
          "Howard et al. 2017, MobileNets; Chollet 2017, Xception")
def depthwise_separable(in_shape, out, kernel, stride, padding, dilation, norm, act, bias):
    pad = same_padding(kernel, dilation) if padding is None else padding
    check_fits(in_shape, kernel, dilation, pad)
    return DepthwiseSeparable(in_shape[0], out, kernel, stride, pad, dilation, norm, act, bias)


@register("grouped_conv", "convolution",
          [p_out(), p_kernel(), p_stride(), p_padding(), Param("groups", "int", 2,
           "channel groups (must divide in and out channels)", min=1, max=8192), p_norm(), p_act(),
           p_bias()],
          "Grouped convolution: channels split into groups convolved separately (params ÷ groups).",
          "Krizhevsky et al. 2012, AlexNet; Xie et al. 2017, ResNeXt")
def grouped_conv(in_shape, out, kernel, stride, padding, groups, norm, act, bias):
    return _conv(in_shape, out, kernel, stride, padding, 1, groups, norm, act, bias)


@register("dilated_conv", "convolution",
          [p_out(), p_kernel(), p_stride(), p_padding(), p_dilation(2), p_norm(), p_act(), p_bias()],
          "Dilated (atrous) convolution: a wider receptive field with the same parameters.",
          "Yu & Koltun 2016, Multi-Scale Context Aggregation by Dilated Convolutions")
def dilated_conv(in_shape, out, kernel, stride, padding, dilation, norm, act, bias):
    return _conv(in_shape, out, kernel, stride, padding, dilation, 1, norm, act, bias)


class TransposedConvNormAct(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, output_padding, norm, act, bias):
        super().__init__()
        from blocks.library.common import make_act
        if bias is None:
            bias = norm == "none"
        self.conv = nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, output_padding, bias=bias)
        if norm == "batch":
            self.bn = nn.BatchNorm2d(c_out)
        if act != "none":
            self.act = make_act(act)


@register("transposed_conv", "convolution",
          [p_out(), p_kernel(2), p_stride(2), Param("padding", "int", 0, "implicit input padding",
           min=0, max=64), Param("output_padding", "int", 0, "extra rows/cols on one side of the output",
           min=0, max=15), p_norm(), p_act(), p_bias()],
          "Transposed convolution: learnable up-sampling (output = (in−1)·stride − 2·pad + kernel).",
          "Zeiler et al. 2010; Long et al. 2015, FCN")
def transposed_conv(in_shape, out, kernel, stride, padding, output_padding, norm, act, bias):
    if output_padding >= stride:
        raise SpecError(f"output_padding ({output_padding}) must be smaller than stride ({stride})")
    _, h, w = in_shape
    side = (min(h, w) - 1) * stride - 2 * padding + kernel + output_padding
    if side < 1:
        raise SpecError(f"input is {h}×{w} but kernel {kernel}, stride {stride} and padding {padding} "
                        f"give an empty output; lower the padding")
    return TransposedConvNormAct(in_shape[0], out, kernel, stride, padding, output_padding, norm, act, bias)


class AddCoords(nn.Module):
    """Concatenate coordinate channels (Liu et al. 2018, "An intriguing failing of CNNs and
    the CoordConv solution", Sec. 3): i and j scaled to [-1, 1] and, with `with_r`, the
    distance from the centre r = sqrt(i² + j²), in [0, √2] (not rescaled). (The handbook's
    prose says [0, 1) coordinates while its code uses [-1, 1]; we follow the paper: [-1, 1].)"""

    def __init__(self, with_r: bool = False):
        super().__init__()
        self.with_r = with_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype) if h > 1 else \
            torch.zeros(1, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype) if w > 1 else \
            torch.zeros(1, device=x.device, dtype=x.dtype)
        yy = ys.view(1, 1, h, 1).expand(n, 1, h, w)
        xx = xs.view(1, 1, 1, w).expand(n, 1, h, w)
        parts = [x, xx, yy]
        if self.with_r:
            parts.append(torch.sqrt(xx * xx + yy * yy))
        return torch.cat(parts, dim=1)


class CoordConv(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, padding, with_r, norm, act, bias):
        super().__init__()
        self.coords = AddCoords(with_r)
        self.conv = ConvNormAct(c_in + 2 + int(with_r), c_out, kernel, stride, padding, 1, 1,
                                norm, act, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.coords(x))


@register("coord_conv", "convolution",
          [p_out(), p_kernel(), p_stride(), p_padding(),
           Param("with_r", "bool", False, "also add the radius channel r"), p_norm(), p_act(), p_bias()],
          "CoordConv: a conv that also sees x/y coordinate channels (and optionally r).",
          "Liu et al. 2018, An intriguing failing of CNNs and the CoordConv solution")
def coord_conv(in_shape, out, kernel, stride, padding, with_r, norm, act, bias):
    pad = same_padding(kernel) if padding is None else padding
    check_fits(in_shape, kernel, 1, pad)
    return CoordConv(in_shape[0], out, kernel, stride, pad, with_r, norm, act, bias)
