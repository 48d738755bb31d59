"""Channel and spatial attention: Squeeze-and-Excitation and CBAM, chosen by name.

Each keeps the weights it applied in its last forward when `keep_weights` is set (the
inspection views set it for one call); otherwise nothing is stored, so training pays nothing.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from blocks.library.common import ATTENTIONS, p_reduction
from blocks.registry import Param, register


def _gate(name: str) -> nn.Module:
    return nn.Hardsigmoid() if name == "hardsigmoid" else nn.Sigmoid()


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018, Eq. 2-4): s = σ(W2 δ(W1 z)), z = GAP(x),
    output x·s. W1: C -> max(min_channels, C // reduction), with biases. The FCs are 1×1
    convs (as torchvision.ops.SqueezeExcitation) so their weights can be swapped with it.
    `gate="hardsigmoid"` is GhostNet's / MobileNetV3's variant."""

    def __init__(self, channels: int, reduction: int = 16, min_channels: int = 1,
                 gate: str = "sigmoid", squeeze: int | None = None):
        super().__init__()
        hidden = squeeze or max(min_channels, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = _gate(gate)
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None  # (N, C) excitation of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        if self.keep_weights:
            self.last_weights = s.detach().flatten(1)
        return x * s


class ChannelGate(nn.Module):
    """CBAM channel attention (Woo et al. 2018, Eq. 2): Mc = σ(MLP(AvgPool F) + MLP(MaxPool F)),
    one MLP shared by both descriptors, C -> C/r -> C with a ReLU between."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Flatten(1), nn.Linear(channels, hidden), nn.ReLU(),
                                 nn.Linear(hidden, channels))
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # -> (N, C) weights
        return self.gate(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))


class SpatialGate(nn.Module):
    """CBAM spatial attention (Eq. 3): Ms = σ(f7×7([AvgPool_c F'; MaxPool_c F'])).
    We give the 7×7 conv a bias and no BatchNorm, as in the paper's equation (the authors'
    code adds a BatchNorm after the conv)."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # -> (N, 1, H, W) map
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.gate(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention,
    F' = Mc(F)·F, F'' = Ms(F')·F'."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel)
        self.keep_weights = False
        self.last_channel: torch.Tensor | None = None  # (N, C)
        self.last_spatial: torch.Tensor | None = None  # (N, 1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = self.channel(x)
        x = x * mc[:, :, None, None]
        ms = self.spatial(x)
        if self.keep_weights:
            self.last_channel, self.last_spatial = mc.detach(), ms.detach()
        return x * ms


def create_attention(name: str, channels: int, reduction: int = 16) -> nn.Module | None:
    """Attention by name, as timm's create_attn: "none" -> None, "se", "cbam"."""
    if name == "none":
        return None
    if name == "se":
        return SqueezeExcite(channels, reduction)
    if name == "cbam":
        return CBAM(channels, reduction)
    raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got '{name}'")


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every SE/CBAM module in a model, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SqueezeExcite, CBAM))]


@register("se", "attention",
          [p_reduction(16), Param("min_channels", "int", 1, "smallest bottleneck width", min=1, max=1024),
           Param("gate", "str", "sigmoid", "gating function", choices=("sigmoid", "hardsigmoid"))],
          "Squeeze-and-Excitation: re-weights channels by a gate learnt from their global means.",
          "Hu et al. 2018, Squeeze-and-Excitation Networks", inspect=("se",))
def se(in_shape, reduction, min_channels, gate):
    return SqueezeExcite(in_shape[0], reduction, min_channels, gate)


@register("cbam", "attention",
          [p_reduction(16), Param("kernel", "int", 7, "spatial attention kernel", min=1, max=15)],
          "CBAM: channel attention (avg+max through a shared MLP) then a 7×7 spatial attention map.",
          "Woo et al. 2018, CBAM: Convolutional Block Attention Module", inspect=("cbam",))
def cbam(in_shape, reduction, kernel):
    if kernel % 2 == 0:
        raise ValueError(f"'kernel' must be odd so the map keeps its size, got {kernel}")
    return CBAM(in_shape[0], reduction, kernel)
