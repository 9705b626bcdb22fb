"""Training on several processes with DistributedDataParallel: world size, sharding, set-up.

``torchrun --nproc_per_node=N`` starts N processes and describes the group in the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). Every process passes the same global batches;
``shard_batch`` gives each its rows, and the training step sums the loss and the token count
over all processes, so the result equals one process on the whole batch (tested).
Outside torchrun every function here describes a world of one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.device import pick_device

__all__ = [
    "Group",
    "world",
    "shard_batch",
    "all_reduce_sum",
    "any_process",
    "unwrap_model",
    "process_group",
]


def world() -> tuple[int, int]:
    """Return (rank, world size): (0, 1) unless torch.distributed is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batch(batch: Seq2SeqBatch, rank: int, world: int) -> Seq2SeqBatch:
    """Return rows ``rank, rank + world, ...`` of ``batch``: this process's share of it.

    Shapes: (B, L) tensors -> (ceil((B - rank) / world), L).
    """
    if len(batch) < world:
        raise ValueError(
            f"a batch of {len(batch)} rows cannot be shared by {world} processes; "
            "use larger batches (more tokens per batch) or fewer processes"
        )
    rows = slice(rank, None, world)
    return Seq2SeqBatch(batch.src[rows], batch.tgt_in[rows], batch.tgt_out[rows])


def all_reduce_sum(values: Tensor) -> Tensor:
    """Return ``values`` summed over every process (in place); in a world of one, unchanged."""
    if world()[1] > 1:
        dist.all_reduce(values)
    return values


def any_process(flag: bool, device: torch.device) -> bool:
    """Return True on every process if ``flag`` is True on any (so that all stop together)."""
    if world()[1] == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the model inside a DistributedDataParallel or DataParallel wrapper (else itself)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


@dataclass(frozen=True)
class Group:
    """This process's place in the run: its device, rank and the number of processes."""

    device: torch.device
    rank: int = 0
    size: int = 1

    @property
    def lead(self) -> bool:
        """Whether this process writes files and shows progress (rank 0)."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """Return ``model`` wrapped in DistributedDataParallel when there are several processes."""
        if self.size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@contextmanager
def process_group(device: torch.device | None = None) -> Iterator[Group]:
    """Join the process group torchrun describes in the environment; leave it at the end.

    Picks this rank's device when ``device`` is None (CUDA device ``LOCAL_RANK`` on a GPU
    machine). Without torchrun (``WORLD_SIZE`` unset or 1) it yields a group of one process.
    A group that was already running is left running.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Group(device or pick_device())
        return
    if device is None:
        device = pick_device()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Group(device, dist.get_rank(), dist.get_world_size())
    finally:
        if created:
            dist.destroy_process_group()
