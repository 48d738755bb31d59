"""Which device to train on, and what to call it.

`choose_device("auto")` prefers CUDA, then Apple's MPS, then the CPU. Asking for a device
that is not there is a user mistake (ValueError with a sentence), not a silent fallback.
"""
from __future__ import annotations

import os

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The device kinds usable in this process, best first (always ends with "cpu")."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    if _mps_available():
        out.append("mps")
    return out + ["cpu"]


def choose_device(name: str = "auto") -> torch.device:
    """Resolve "auto" | "cpu" | "cuda" | "cuda:N" | "mps" to a torch.device."""
    if not isinstance(name, str):
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    kind = name.split(":", 1)[0]
    if kind == "auto":
        return torch.device(available_devices()[0])
    if kind not in DEVICES:
        raise ValueError(f"unknown device '{name}'; choose one of {', '.join(DEVICES)}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; "
                             "use --device cpu (or auto)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}' does not exist; this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
        return device
    if kind == "mps" and not _mps_available():
        raise ValueError("device 'mps' was asked for but Apple's MPS is not available; "
                         "use --device cpu (or auto)")
    return torch.device(kind)


def device_name(device: torch.device) -> str:
    """A human name: the GPU's marketing name, "Apple MPS" or "CPU"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return "CPU"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock reading measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
