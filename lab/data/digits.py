"""scikit-learn's 1,797 handwritten 8x8 digits, upsampled so that conv stacks have room to work."""

from __future__ import annotations

import numpy as np
import torch

from .base import resize_uint8, stratified_split


def load_digits_arrays(image_size: int = 28, seed: int = 0):
    """Returns (train_x, train_y, test_x, test_y): uint8 (N,1,S,S) and int64 labels, 80/20 stratified by seed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # Values are 0..16; scale to the full byte range before interpolating.
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    x = resize_uint8(x, image_size)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = stratified_split(d.target, 0.2, seed)
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    return x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous()
