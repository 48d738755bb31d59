"""Composite blocks of the classic networks: VGG, NiN, Inception, ResNet basic and bottleneck,
DenseNet dense block and transition, MobileNetV2 inverted residual. Residual blocks take
`attention` ("none" | "se" | "cbam"), applied to the residual branch before the addition
(as in SE-ResNet, Hu et al. 2018 Fig. 3, and CBAM-ResNet, Woo et al. 2018 Fig. 3)."""
from __future__ import annotations

import torch
import torch.nn as nn

from blocks.library.attention import create_attention
from blocks.library.common import (ConvNormAct, check_fits, make_act, p_act, p_attention, p_kernel,
                                   p_norm, p_out, p_reduction)
from blocks.registry import Param, SpecError, register


def _stride2(help: str = "stride of the block (first repeat only)") -> Param:
    return Param("stride", "int", 1, help, min=1, max=4)


class VGGBlock(nn.Sequential):
    """`convs` 3×3 convs (padding 1) with activation, then 2×2 max-pool (Simonyan & Zisserman 2015)."""

    def __init__(self, c_in, c_out, convs, norm, act):
        super().__init__(*[ConvNormAct(c_in if i == 0 else c_out, c_out, 3, 1, 1, norm=norm, act=act)
                           for i in range(convs)], nn.MaxPool2d(2, 2))


@register("vgg_block", "composite",
          [p_out(), Param("convs", "int", 1, "3×3 convs before the pool", min=1, max=16),
           p_norm("none"), p_act()],
          "VGG block: a few 3×3 convs then a 2×2 max-pool (halves the size).",
          "Simonyan & Zisserman 2015, Very Deep Convolutional Networks")
def vgg_block(in_shape, out, convs, norm, act):
    check_fits(in_shape, 2, what="its 2×2 pool, kernel")
    return VGGBlock(in_shape[0], out, convs, norm, act)


class NiNBlock(nn.Sequential):
    """A k×k conv followed by two 1×1 convs, each with ReLU (Lin et al. 2013, 'mlpconv')."""

    def __init__(self, c_in, c_out, kernel, stride, padding, norm, act):
        super().__init__(ConvNormAct(c_in, c_out, kernel, stride, padding, norm=norm, act=act),
                         ConvNormAct(c_out, c_out, 1, norm=norm, act=act),
                         ConvNormAct(c_out, c_out, 1, norm=norm, act=act))


@register("nin_block", "composite",
          [p_out(96), p_kernel(11), Param("stride", "int", 1, "stride of the first conv", min=1, max=8),
           Param("padding", "int", 0, "padding of the first conv", min=0, max=32), p_norm("none"), p_act()],
          "NiN block: a conv then two 1×1 convs, a tiny MLP at every pixel.",
          "Lin et al. 2013, Network in Network")
def nin_block(in_shape, out, kernel, stride, padding, norm, act):
    check_fits(in_shape, kernel, 1, padding)
    return NiNBlock(in_shape[0], out, kernel, stride, padding, norm, act)


class Inception(nn.Module):
    """GoogLeNet's Inception module (Szegedy et al. 2015, Fig. 2b): four parallel paths —
    1×1; 1×1 -> 3×3; 1×1 -> 5×5; 3×3 max-pool -> 1×1 — concatenated along channels.
    (torchvision uses 3×3 in the third path by a known slip; we keep the paper's 5×5.)"""

    def __init__(self, c_in, c1, c2, c3, c4, norm, act):
        super().__init__()
        self.p1 = ConvNormAct(c_in, c1, 1, norm=norm, act=act)
        self.p2 = nn.Sequential(ConvNormAct(c_in, c2[0], 1, norm=norm, act=act),
                                ConvNormAct(c2[0], c2[1], 3, norm=norm, act=act))
        self.p3 = nn.Sequential(ConvNormAct(c_in, c3[0], 1, norm=norm, act=act),
                                ConvNormAct(c3[0], c3[1], 5, norm=norm, act=act))
        self.p4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvNormAct(c_in, c4, 1, norm=norm, act=act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.p1(x), self.p2(x), self.p3(x), self.p4(x)], dim=1)


@register("inception", "composite",
          [Param("c1", "int", 64, "1×1 path channels", min=1, max=4096, channels=True),
           Param("c2", "ints", [96, 128], "1×1 reduce, 3×3 channels", min=1, max=4096, channels=True),
           Param("c3", "ints", [16, 32], "1×1 reduce, 5×5 channels", min=1, max=4096, channels=True),
           Param("c4", "int", 32, "pool projection channels", min=1, max=4096, channels=True),
           p_norm("batch"), p_act()],
          "Inception: 1×1, 3×3, 5×5 and pooled paths side by side, concatenated.",
          "Szegedy et al. 2015, Going Deeper with Convolutions")
def inception(in_shape, c1, c2, c3, c4, norm, act):
    if len(c2) != 2 or len(c3) != 2:
        raise SpecError("'c2' and 'c3' are [reduce, out] pairs of two channel counts")
    return Inception(in_shape[0], c1, c2, c3, c4, norm, act)


def _shortcut(c_in, c_out, stride) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicResidual(nn.Module):
    """ResNet basic block (He et al. 2016, Fig. 2): two 3×3 convs with BN, attention on the
    branch, identity or 1×1-conv shortcut, activation after the addition."""

    def __init__(self, c_in, c_out, stride=1, attention="none", reduction=16, act="relu"):
        super().__init__()
        self.conv1 = ConvNormAct(c_in, c_out, 3, stride, act=act)
        self.conv2 = ConvNormAct(c_out, c_out, 3, act="none")
        self.attn = create_attention(attention, c_out, reduction)
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.attn is not None:
            y = self.attn(y)
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


@register("basic_residual", "composite",
          [p_out(), _stride2(), p_attention(), p_reduction(), p_act()],
          "ResNet basic block: two 3×3 convs plus a shortcut; optional SE/CBAM attention.",
          "He et al. 2016, Deep Residual Learning", inspect=("se", "cbam"))
def basic_residual(in_shape, out, stride, attention, reduction, act):
    return BasicResidual(in_shape[0], out, stride, attention, reduction, act)


class BottleneckResidual(nn.Module):
    """ResNet bottleneck (He et al. 2016, Fig. 5): 1×1 reduce, 3×3, 1×1 expand; the stride sits
    on the 3×3 conv (torchvision's "ResNet v1.5")."""

    def __init__(self, c_in, c_out, mid, stride=1, groups=1, attention="none", reduction=16, act="relu"):
        super().__init__()
        self.conv1 = ConvNormAct(c_in, mid, 1, act=act)
        self.conv2 = ConvNormAct(mid, mid, 3, stride, groups=groups, act=act)
        self.conv3 = ConvNormAct(mid, c_out, 1, act="none")
        self.attn = create_attention(attention, c_out, reduction)
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        if self.attn is not None:
            y = self.attn(y)
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


@register("bottleneck_residual", "composite",
          [p_out(256), Param("mid", "int", None, "bottleneck channels; empty = out/4", min=1, max=8192,
                             channels=True, optional=True),
           _stride2(), Param("groups", "int", 1, "groups of the 3×3 conv (ResNeXt)", min=1, max=1024),
           p_attention(), p_reduction(), p_act()],
          "ResNet bottleneck: 1×1 reduce, 3×3, 1×1 expand plus a shortcut; optional SE/CBAM.",
          "He et al. 2016, Deep Residual Learning", inspect=("se", "cbam"))
def bottleneck_residual(in_shape, out, mid, stride, groups, attention, reduction, act):
    mid = mid or max(1, out // 4)
    if mid % groups:
        raise SpecError(f"groups={groups} must divide the bottleneck channels ({mid})")
    return BottleneckResidual(in_shape[0], out, mid, stride, groups, attention, reduction, act)


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (bn_size·k) -> BN-ReLU-3×3 conv (k), output concatenated to the input."""

    def __init__(self, c_in, growth, bn_size):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act2(self.bn2(self.conv1(self.act1(self.bn1(x))))))
        return torch.cat([x, y], dim=1)


@register("dense_block", "composite",
          [Param("layers", "int", 6, "dense layers", min=1, max=128),
           Param("growth", "int", 32, "growth rate k: channels each layer adds", min=1, max=1024,
                 channels=True),
           Param("bn_size", "int", 4, "bottleneck width as a multiple of k", min=1, max=16)],
          "DenseNet dense block: every layer sees the concatenation of all earlier maps.",
          "Huang et al. 2017, Densely Connected Convolutional Networks")
def dense_block(in_shape, layers, growth, bn_size):
    return nn.Sequential(*[DenseLayer(in_shape[0] + i * growth, growth, bn_size) for i in range(layers)])


class Transition(nn.Sequential):
    """DenseNet transition: BN-ReLU-1×1 conv (compress) then 2×2 average pool."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.bn, self.act = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


@register("transition", "composite",
          [Param("compression", "float", 0.5, "θ: output channels = ⌊θ·input channels⌋", min=0.01, max=1.0)],
          "DenseNet transition: 1×1 conv compresses channels, 2×2 average pool halves the size.",
          "Huang et al. 2017, Densely Connected Convolutional Networks")
def transition(in_shape, compression):
    check_fits(in_shape, 2, what="its 2×2 pool, kernel")
    return Transition(in_shape[0], max(1, int(in_shape[0] * compression)))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al. 2018, Table 1): 1×1 expand (t·C, ReLU6),
    3×3 depthwise (ReLU6), optional attention, 1×1 linear projection; identity shortcut when
    stride 1 and channels match."""

    def __init__(self, c_in, c_out, expand=6, stride=1, kernel=3, attention="none", reduction=4,
                 act="relu6"):
        super().__init__()
        hidden = int(round(c_in * expand))
        self.expand = ConvNormAct(c_in, hidden, 1, act=act) if expand != 1 else None
        self.depthwise = ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, act=act)
        self.attn = create_attention(attention, hidden, reduction)
        self.project = ConvNormAct(hidden, c_out, 1, act="none")
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.attn is not None:
            y = self.attn(y)
        y = self.project(y)
        return x + y if self.use_residual else y


@register("inverted_residual", "composite",
          [p_out(24), Param("expand", "int", 6, "expansion factor t", min=1, max=16), _stride2(),
           p_kernel(3), p_attention(), p_reduction(4), p_act("relu6")],
          "MobileNetV2 inverted residual: expand, depthwise, linear bottleneck, shortcut.",
          "Sandler et al. 2018, MobileNetV2", inspect=("se", "cbam"))
def inverted_residual(in_shape, out, expand, stride, kernel, attention, reduction, act):
    if kernel % 2 == 0:
        raise SpecError(f"'kernel' must be odd, got {kernel}")
    return InvertedResidual(in_shape[0], out, expand, stride, kernel, attention, reduction, act)
