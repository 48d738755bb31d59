"""Regularisation: DropBlock and Dropout."""
from __future__ import annotations

import torch.nn as nn

from blocks.registry import Param, SpecError, register


@register("dropblock", "regularisation",
          [Param("p", "float", 0.1, "share of activations dropped (1 − keep_prob)", min=0.0, max=0.99),
           Param("block_size", "int", 3, "side of each dropped square", min=1, max=64)],
          "DropBlock: drops contiguous squares of a feature map; stronger than dropout for convs.",
          "Ghiasi et al. 2018, DropBlock: A regularization method for convolutional networks")
def dropblock(in_shape, p, block_size):
    # torchvision's drop_block2d uses the paper's Eq. 1 gamma,
    # γ = p/bs² · H·W/((H−bs+1)(W−bs+1)) — the feature-size term the handbook's code omits —
    # and renormalises by the kept share. We keep p fixed rather than the paper's linear
    # schedule; the trainer's settings may ramp it.
    if block_size % 2 == 0:
        raise SpecError(f"'block_size' must be odd (torchvision centres each block), got {block_size}")
    if block_size > min(in_shape[1:]):
        raise SpecError(f"block_size {block_size} exceeds the {in_shape[1]}×{in_shape[2]} input")
    from torchvision.ops import DropBlock2d   # here: importing torchvision takes seconds
    return DropBlock2d(p, block_size, inplace=False)


@register("dropout", "regularisation",
          [Param("p", "float", 0.5, "probability of zeroing each element", min=0.0, max=0.99)],
          "Dropout: zeroes random elements in training and rescales the rest.",
          "Srivastava et al. 2014", takes_flat=True)
def dropout(in_shape, p):
    return nn.Dropout(p)
