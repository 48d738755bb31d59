"""Limits for a publicly hosted app, read from environment variables with safe defaults.

| variable                           | default (CPU / GPU) | what it bounds                        |
|------------------------------------|---------------------|---------------------------------------|
| CONVSCOPE_MAX_PARAMS               | 5e6 / 50e6          | parameters of a network to train      |
| CONVSCOPE_MAX_EPOCHS               | 20                  | epochs of one training run            |
| CONVSCOPE_MAX_BATCH                | 512                 | batch size                            |
| CONVSCOPE_MAX_UPLOAD_MB            | 20                  | any uploaded file (Gradio max_file_size) |
| CONVSCOPE_MAX_CONCURRENT_TRAININGS | 2                   | trainings running at once (queue)     |
| CONVSCOPE_MAX_ACTIVATION_MB        | 3072 / 16384        | activation memory of one training batch |
| CONVSCOPE_MAX_STEP_GFLOPS          | 1000 / 50000        | FLOPs of one training step (batch)    |
| CONVSCOPE_MAX_RUNS                 | 8                   | finished runs a session keeps         |

A bad value (not a positive number) falls back to the default rather than opening the
server up. `check_spec_limits` measures a spec on the meta device (no memory used): its
parameters, the activation memory of one batch and the FLOPs of one training step, taken
as 3x the forward pass (the backward pass costs about twice the forward).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from blocks.summary import Summary, human, summarize

# 1 TFLOP a step is ~10 s on a 2-core CPU: Stop still answers within a step, and every
# preset at the app's width and batch is far below it (ResNet-18 at width 1, batch 512: 1.7T).
_DEFAULTS_CPU = {"params": 5e6, "epochs": 20, "batch": 512, "upload_mb": 20,
                 "concurrent": 2, "activation_mb": 3072, "step_gflops": 1000, "runs": 8}
_DEFAULTS_GPU = {**_DEFAULTS_CPU, "params": 50e6, "activation_mb": 16384, "step_gflops": 50000}
BACKWARD_FACTOR = 3   # FLOPs of a training step = 3 x forward (forward + ~2x for backward)


class LimitError(ValueError):
    """A request beyond this server's limits; the message gives the limit and the figure."""


@dataclass(frozen=True)
class Limits:
    max_params: int
    max_epochs: int
    max_batch: int
    max_upload_mb: float
    max_concurrent_trainings: int
    max_activation_mb: float
    max_runs: int
    max_step_gflops: float = _DEFAULTS_CPU["step_gflops"]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, gpu: bool | None = None) -> "Limits":
        """Limits from `env` (default os.environ); GPU defaults where a GPU is present."""
        env = os.environ if env is None else env
        if gpu is None:
            gpu = _has_gpu(env)
        d = _DEFAULTS_GPU if gpu else _DEFAULTS_CPU
        return cls(
            max_params=int(_read(env, "CONVSCOPE_MAX_PARAMS", d["params"])),
            max_epochs=int(_read(env, "CONVSCOPE_MAX_EPOCHS", d["epochs"])),
            max_batch=int(_read(env, "CONVSCOPE_MAX_BATCH", d["batch"])),
            max_upload_mb=_read(env, "CONVSCOPE_MAX_UPLOAD_MB", d["upload_mb"]),
            max_concurrent_trainings=int(_read(env, "CONVSCOPE_MAX_CONCURRENT_TRAININGS",
                                               d["concurrent"])),
            max_activation_mb=_read(env, "CONVSCOPE_MAX_ACTIVATION_MB", d["activation_mb"]),
            max_runs=int(_read(env, "CONVSCOPE_MAX_RUNS", d["runs"])),
            max_step_gflops=_read(env, "CONVSCOPE_MAX_STEP_GFLOPS", d["step_gflops"]),
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def gradio_max_file_size(self) -> str:
        """The upload limit in the form `launch(max_file_size=...)` takes."""
        return f"{self.max_upload_mb:g}mb"


def _has_gpu(env: Mapping[str, str]) -> bool:
    if env.get("SPACES_ZERO_GPU"):
        return True
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch / broken driver: CPU limits
        return False


def _read(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or not str(raw).strip():
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        return float(default)
    return value if value > 0 and value == value and value != float("inf") else float(default)


def check_spec_limits(spec: dict, batch_size: int, limits: Limits | None = None) -> Summary:
    """The spec's summary, or LimitError when its parameters, the activation memory of one
    batch or the FLOPs of one training step exceed the limits (checked in that order, each
    message giving the figure and the limit). SpecError (a ValueError) when the spec does
    not build."""
    limits = limits or Limits.from_env()
    check_batch(batch_size, limits)
    s = summarize(spec)
    if s.params > limits.max_params:
        raise LimitError(f"the network has {human(s.params)} parameters; this server trains at "
                         f"most {human(limits.max_params)} (CONVSCOPE_MAX_PARAMS) — lower the "
                         f"width or remove layers")
    batch_mb = s.activation_bytes * batch_size / 2**20
    if batch_mb > limits.max_activation_mb:
        raise LimitError(f"one batch of {batch_size} needs about {batch_mb:,.0f} MB of activations; "
                         f"this server allows {limits.max_activation_mb:,.0f} MB "
                         f"(CONVSCOPE_MAX_ACTIVATION_MB) — use a smaller batch or width")
    step = step_flops(s, batch_size)
    if step > limits.max_step_gflops * 1e9:
        raise LimitError(f"one training step (batch of {batch_size}) needs about {human(step)}FLOPs; "
                         f"this server allows {human(limits.max_step_gflops * 1e9)}FLOPs a step "
                         f"(CONVSCOPE_MAX_STEP_GFLOPS) — use a smaller batch, width or input")
    return s


def step_flops(summary: Summary, batch_size: int) -> int:
    """FLOPs of one training step: forward and backward over a batch."""
    return BACKWARD_FACTOR * summary.flops * int(batch_size)


def check_batch(batch_size: int, limits: Limits | None = None) -> int:
    limits = limits or Limits.from_env()
    if isinstance(batch_size, float) and batch_size.is_integer():
        batch_size = int(batch_size)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise LimitError(f"batch size must be a positive integer, got {batch_size!r}")
    if batch_size > limits.max_batch:
        raise LimitError(f"batch size {batch_size} is above this server's limit of "
                         f"{limits.max_batch} (CONVSCOPE_MAX_BATCH)")
    return batch_size


def check_epochs(epochs: int, limits: Limits | None = None) -> int:
    limits = limits or Limits.from_env()
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise LimitError(f"epochs must be a positive integer, got {epochs!r}")
    if epochs > limits.max_epochs:
        raise LimitError(f"{epochs} epochs is above this server's limit of {limits.max_epochs} "
                         f"(CONVSCOPE_MAX_EPOCHS)")
    return epochs


def check_upload(path: str, limits: Limits | None = None) -> int:
    """The file's size in bytes, or LimitError when it is above the upload limit."""
    limits = limits or Limits.from_env()
    size = os.path.getsize(path)
    if size > limits.max_upload_bytes:
        raise LimitError(f"the file is {size / 2**20:.1f} MB; uploads are limited to "
                         f"{limits.max_upload_mb:g} MB (CONVSCOPE_MAX_UPLOAD_MB)")
    return size
