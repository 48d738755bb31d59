"""Several processes, one run: DistributedDataParallel inside our Trainer, under torchrun.

    torchrun --nproc_per_node=N -m lab train --preset "ResNet-18" --batch-size 256

torchrun starts N copies of `python -m lab train` and tells each its RANK, LOCAL_RANK and
WORLD_SIZE; `setup()` reads them, joins the process group (NCCL on GPUs, gloo on CPUs) and
returns a `Distributed` handle the Trainer uses to

* shard the data the way `DistributedSampler` does, on the device: every process draws the
  same seeded permutation and takes every WORLD_SIZE-th index from RANK on;
* wrap the network in `DistributedDataParallel` (gradients averaged in the backward pass),
  optionally with its BatchNorms turned into `SyncBatchNorm` (statistics over the global
  batch; torch runs that on GPUs only);
* sum metric tensors over processes, so every process reports the same numbers.

`--batch-size` stays the *global* batch (each process takes batch / N), so a run on N
processes follows the same schedule as on one and their accuracies can be compared. Only
rank 0 prints and writes the run folder. Multi-node runs use torchrun's own rendezvous
flags; nothing here needs to know how many machines there are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class DistributedError(RuntimeError):
    """A distributed set-up that cannot work; one line a user can act on."""


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun set it (1 when not started by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be a whole number, got "
                               f"{os.environ['WORLD_SIZE']!r}") from None


def rank_from_env() -> int:
    """RANK as torchrun set it (0 when not started by torchrun, or unreadable)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (only made when WORLD_SIZE > 1)."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This process's share of `indices`: every world_size-th from rank on."""
        return indices[self.rank::self.world_size]

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> DistributedDataParallel:
        """`model` under DDP (the same parameters: an optimizer made on `model` still
        works). With `sync_bn`, its BatchNorms become SyncBatchNorm first, in place (same
        parameters and buffers, so the state_dict keeps its keys)."""
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over all processes, in place (a collective: all must call it)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """`tensor` (the same shape in every process) from every process, in rank order, as
        CPU tensors (a collective: all must call it). Checkpoints gather generator states."""
        t = tensor.to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm running statistics), so that all
        of them evaluate the network rank 0 saves."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the job. After a finished run all processes wait for each other first
        (rank 0 may still be saving; one that left early would take the store the others
        still use with it). After an error, `wait=False`: the others may be inside a
        collective this process will never join, and torchrun stops them when it exits."""
        if dist.is_initialized():
            try:
                if wait:
                    self.barrier()
            finally:
                dist.destroy_process_group()


# What a collective raises when a process on its other side is gone (gloo says so in words;
# NCCL and the store raise torch.distributed.DistError).
PEER_GONE = ("closed by peer", "reset by peer", "Broken pipe", "Connection refused")


def lost_a_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process of the job failed
    (that process has said why; this one need not print a traceback too)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(p in str(error) for p in PEER_GONE))


def _device_for(device_arg: str, local_rank: int) -> torch.device:
    kind = device_arg.split(":", 1)[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "mps":
        raise DistributedError("distributed training runs on CUDA GPUs (NCCL) or CPUs (gloo), "
                               "not on Apple MPS; use --device cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedError("device 'cuda' was asked for but no CUDA GPU is available; "
                               "use --device cpu (or auto)")
    if ":" in device_arg:
        raise DistributedError(f"under torchrun each process takes the GPU of its LOCAL_RANK; "
                               f"use --device cuda, not {device_arg}")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedError(f"process {local_rank} on this machine has no GPU of its own "
                               f"(there are {count}); use --nproc_per_node={count} or fewer")
    return torch.device("cuda", local_rank)


def setup(device_arg: str = "auto") -> Distributed | None:
    """Join the process group torchrun set up; None when running as a single process."""
    world = world_size_from_env()
    if world == 1:
        return None
    missing = [k for k in ENV if k not in os.environ]
    if missing or "MASTER_ADDR" not in os.environ:
        raise DistributedError("WORLD_SIZE is set but RANK, LOCAL_RANK or MASTER_ADDR is not; "
                               "start distributed runs with torchrun --nproc_per_node=N -m lab train …")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = _device_for(device_arg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Distributed(rank, local_rank, world, device, dist.get_backend())
