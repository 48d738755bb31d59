"""Normalisation, pooling and the head: BatchNorm, LRN, max/avg pool, global average pool,
flatten, linear."""
from __future__ import annotations

import torch.nn as nn

from blocks.library.common import check_fits
from blocks.registry import Param, SpecError, register


@register("batchnorm", "normalisation", [],
          "Batch normalisation over each channel (or feature, after flatten).",
          "Ioffe & Szegedy 2015", takes_flat=True)
def batchnorm(in_shape):
    return nn.BatchNorm2d(in_shape[0]) if len(in_shape) == 3 else nn.BatchNorm1d(in_shape[0])


@register("lrn", "normalisation",
          [Param("size", "int", 5, "neighbouring channels summed over", min=1, max=64),
           Param("alpha", "float", 1e-4, "scale", min=0, max=10),
           Param("beta", "float", 0.75, "exponent", min=0, max=10),
           Param("k", "float", 2.0, "additive constant", min=0, max=100)],
          "Local response normalisation across channels (AlexNet).", "Krizhevsky et al. 2012, AlexNet")
def lrn(in_shape, size, alpha, beta, k):
    return nn.LocalResponseNorm(size, alpha, beta, k)


def _pool_params(kernel: int, stride):
    return [Param("kernel", "int", kernel, "window size", min=1, max=64),
            Param("stride", "int", stride, "stride; empty = kernel", min=1, max=64, optional=True),
            Param("padding", "int", 0, "zero padding (at most kernel/2)", min=0, max=32),
            Param("ceil_mode", "bool", False, "round the output size up")]


def _pool(cls, in_shape, kernel, stride, padding, ceil_mode):
    if padding > kernel // 2:
        raise SpecError(f"padding {padding} must be at most half the kernel ({kernel // 2})")
    check_fits(in_shape, kernel, 1, padding)
    return cls(kernel, stride, padding, ceil_mode=ceil_mode)


@register("maxpool", "pooling", _pool_params(2, None), "Max pooling: keeps the strongest response.")
def maxpool(in_shape, kernel, stride, padding, ceil_mode):
    return _pool(nn.MaxPool2d, in_shape, kernel, stride, padding, ceil_mode)


@register("avgpool", "pooling", _pool_params(2, None), "Average pooling.")
def avgpool(in_shape, kernel, stride, padding, ceil_mode):
    return _pool(nn.AvgPool2d, in_shape, kernel, stride, padding, ceil_mode)


class GlobalAvgPool(nn.Module):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


@register("global_avg_pool", "pooling", [],
          "Global average pooling: one number per channel, (C, H, W) -> (C).",
          "Lin et al. 2013, Network in Network")
def global_avg_pool(in_shape):
    return GlobalAvgPool()


@register("flatten", "head", [], "Flatten a (C, H, W) map into C·H·W features.")
def flatten(in_shape):
    return nn.Flatten(1)


MAX_LINEAR_IN = 1 << 24


@register("linear", "head",
          [Param("out", "int", None, "output features; empty = the number of classes",
                 min=1, max=65536, channels=True, optional=True),
           Param("bias", "bool", True, "add a bias")],
          "Fully connected layer; flattens a feature map first. Without `out` it is the classifier.",
          takes_flat=True)
def linear(in_shape, out, bias):
    n_in = 1
    for s in in_shape:
        n_in *= s
    if n_in > MAX_LINEAR_IN:
        raise SpecError(f"receives {n_in:,} features; pool or stride first (at most {MAX_LINEAR_IN:,})")
    lin = nn.Linear(n_in, out, bias=bias)
    return lin if len(in_shape) == 1 else nn.Sequential(nn.Flatten(1), lin)
