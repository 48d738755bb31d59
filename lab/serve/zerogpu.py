"""Hugging Face ZeroGPU support that costs nothing elsewhere.

On a ZeroGPU Space a function decorated with `spaces.GPU` runs in a separate process that
holds a GPU for at most `duration` seconds: its arguments and every value it returns or
yields are pickled across the process boundary. So a decorated function must be a
module-level function taking and yielding plain data (dicts, lists, numbers, CPU tensors),
never a model, a lock or a session object, and it must finish within `duration`.
Everywhere else (`spaces` not installed, or a Space without ZeroGPU) `gpu` is a no-op.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

MAX_DURATION_S = 300  # ZeroGPU refuses longer reservations for most accounts


def on_zerogpu() -> bool:
    """True on a Hugging Face Space that runs on ZeroGPU."""
    return bool(os.environ.get("SPACES_ZERO_GPU")) and _spaces() is not None


def on_space() -> bool:
    """True inside any Hugging Face Space."""
    return bool(os.environ.get("SPACE_ID"))


def _spaces():
    try:
        import spaces  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed, or installed without a GPU runtime
        return None
    return spaces


def gpu(duration: int | Callable[..., int] = 120) -> Callable[[F], F]:
    """`spaces.GPU(duration=...)` where the `spaces` package is importable, else a no-op.

    `duration` is seconds, or a function of the decorated function's arguments returning
    seconds (ZeroGPU's dynamic duration); either is capped at MAX_DURATION_S.
    """
    spaces = _spaces()
    if callable(duration):
        estimate = duration

        def seconds(*args, **kwargs) -> int:
            return _cap(estimate(*args, **kwargs))
    else:
        seconds = _cap(duration)

    def wrap(fn: F) -> F:
        if spaces is None:
            return fn
        return spaces.GPU(duration=seconds)(fn)
    return wrap


def _cap(seconds: float) -> int:
    return max(1, min(int(seconds), MAX_DURATION_S))


def duration_for(epochs: int, seconds_per_epoch: float = 20.0) -> int:
    """A GPU reservation for a training run: a rough estimate, capped at MAX_DURATION_S."""
    return max(30, min(MAX_DURATION_S, int(30 + epochs * seconds_per_epoch)))
