"""Started by tests/test_distributed.py under torchrun: every process trains with lab's own
Trainer and writes what it ended with to OUT/rank<R>.safetensors (parameters, gradients,
buffers) and OUT/rank<R>.json (its events), so the test can compare processes.

    torchrun --nproc_per_node=2 tests/dist_worker.py OUT step|epoch|epoch-streamed|every-step|stop
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from lab.train import distributed
from lab.datasets import load_dataset
from lab.train.trainer import Trainer, TrainSettings

# No BatchNorm: one step on two half batches must equal one step on the whole batch.
NO_BN = {"name": "No-BN CNN", "input": [3, 32, 32], "classes": 10, "layers": [
    {"block": "conv", "params": {"out": 8, "norm": "none", "bias": True}},
    {"block": "maxpool"},
    {"block": "conv", "params": {"out": 16, "norm": "none", "bias": True}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}
WITH_BN = {"name": "BN CNN", "input": [3, 32, 32], "classes": 10, "layers": [
    {"block": "conv", "params": {"out": 8}},
    {"block": "maxpool"},
    {"block": "conv", "params": {"out": 16}},
    {"block": "dropout", "params": {"p": 0.1}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}

# mode -> (spec, dataset sizes, settings)
MODES = {
    "step": (NO_BN, (32, 16), dict(epochs=1, batch_size=32)),
    "epoch": (WITH_BN, (512, 128), dict(epochs=1, batch_size=64, augment=True)),
    "stop": (WITH_BN, (2048, 64), dict(epochs=2, batch_size=32)),
}
MODES["epoch-streamed"] = MODES["epoch"]     # the same run, batches from host memory
# Reports every step: the spacing rule (steps ≈ report_interval / mean step time) at its limit.
MODES["every-step"] = (WITH_BN, (256, 32), dict(epochs=2, batch_size=32, report_interval=0.0))


def run(out: Path, mode: str, dist=None) -> Trainer:
    """Train as `mode` says (in this process, or in this torchrun process when `dist`)."""
    spec, (n_train, n_test), extra = MODES[mode]
    ds = load_dataset("shapes", train_size=n_train, test_size=n_test)
    trainer = Trainer(spec, TrainSettings(device="cpu", **extra), ds, dist=dist,
                      max_device_bytes=0 if mode.endswith("-streamed") else None)
    for event in trainer.run():
        # One process alone is asked to stop; the others must follow at the same step.
        if mode == "stop" and event["type"] == "step" and dist is not None and dist.rank == 1:
            trainer.stop()
    rank = 0 if dist is None else dist.rank
    model = trainer.model
    tensors = {f"param.{k}": v.detach().clone() for k, v in model.named_parameters()}
    tensors |= {f"grad.{k}": v.grad.detach().clone() for k, v in model.named_parameters()
                if v.grad is not None}
    tensors |= {f"buffer.{k}": v.detach().clone() for k, v in model.named_buffers()}
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(trainer.history))
    return trainer


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    dist = distributed.setup("cpu")
    try:
        run(out, mode, dist)
    finally:
        dist.close()


if __name__ == "__main__":
    main()
