"""The Dataset record every loader returns, its error type, and the small helpers they share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


class DatasetError(ValueError):
    """A data set cannot be loaded; the message is one line that says what to do."""


@dataclass
class Dataset:
    """Images as uint8 tensors on the CPU, split once into train and test.

    The tensors are the raw pixels; `normalize` turns a batch of them into the float
    input a network expects, on whatever device the batch lives.
    """

    name: str
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]  # per channel, 0..1 scale, from the train split
    std: tuple[float, ...]
    test_masks: torch.Tensor | None = None  # bool (N, H, W): where the object is
    train_masks: torch.Tensor | None = None
    report: dict = field(default_factory=dict)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """float32 (x / 255 - mean) / std for a uint8 batch (N, C, H, W) or image (C, H, W)."""
        if x_uint8.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 pixels, got {x_uint8.dtype}")
        c = len(self.mean)
        if x_uint8.dim() < 3 or x_uint8.shape[-3] != c:
            raise ValueError(f"normalize expects (N, {c}, H, W) or ({c}, H, W), got {tuple(x_uint8.shape)}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x_uint8.device).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x_uint8.device).view(c, 1, 1)
        return (x_uint8.float() / 255.0 - mean) / std

    def info(self) -> dict:
        """A JSON-able summary for the UI, the CLI and run folders."""
        counts = torch.bincount(self.train_y, minlength=len(self.classes)).tolist()
        return {
            "name": self.name,
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "input_shape": list(self.input_shape),
            "train_size": int(len(self.train_y)),
            "test_size": int(len(self.test_y)),
            "train_per_class": counts,
            "mean": [round(float(m), 6) for m in self.mean],
            "std": [round(float(s), 6) for s in self.std],
            "has_masks": self.test_masks is not None,
            "report": _jsonable(self.report),
        }

    def copy(self) -> "Dataset":
        """A copy whose tensors can be changed without touching the cached original."""
        def c(t):
            return None if t is None else t.clone()

        return dataclasses.replace(
            self,
            classes=list(self.classes),
            train_x=c(self.train_x),
            train_y=c(self.train_y),
            test_x=c(self.test_x),
            test_y=c(self.test_y),
            test_masks=c(self.test_masks),
            train_masks=c(self.train_masks),
            report=dict(self.report),
        )


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (0..1 scale) of uint8 images via 256-bin histograms.

    Histograms avoid a float copy of the whole split (CIFAR-10 would need 600 MB).
    """
    if len(x) == 0:
        raise DatasetError("the train split is empty")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        m = (counts * values).sum() / n
        var = (counts * (values - m) ** 2).sum() / n
        means.append(float(m))
        # A constant channel would divide by zero; 1.0 leaves it centred but unscaled.
        stds.append(float(var.sqrt()) if var > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) batch to (size, size), antialiased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    out = []
    shrink = size < max(x.shape[-2:])
    for i in range(0, len(x), 4096):
        xf = x[i : i + 4096].float()
        y = F.interpolate(xf, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else x.new_empty((0, x.shape[1], size, size))


def subsample(n_total: int, n: int | None, labels: torch.Tensor, seed: int, stream: int) -> torch.Tensor | None:
    """Indices of a seeded, class-stratified subset of size n (None when no subset is asked for)."""
    if n is None or n >= n_total:
        return None
    if n <= 0:
        raise DatasetError(f"the requested split size must be positive, got {n}")
    g = torch.Generator().manual_seed(int(seed) * 1000003 + stream)
    perm = torch.randperm(n_total, generator=g)
    # Round-robin over classes in the shuffled order keeps the subset balanced like the whole.
    lab = labels[perm]
    rank = torch.empty(n_total, dtype=torch.long)
    for c in torch.unique(lab):
        where = (lab == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    order = torch.argsort(rank * n_total + torch.arange(n_total), stable=True)
    return perm[order[:n]].sort().values


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split; every class with at least two items gets at least one test item."""
    rng = np.random.default_rng([int(seed), 0x5B117])
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
