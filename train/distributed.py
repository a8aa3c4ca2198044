"""Data parallel training through torchrun (DistributedDataParallel).

``torchrun --nproc_per_node=N -m stethoedge train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
trainer calls ``init_from_env`` and gets NCCL on GPUs, gloo on CPU. Each rank takes every
``world``-th sample of the same seeded epoch order, so together the ranks see one epoch; DDP
averages gradients in backward (both backward passes of a SAM step), so all ranks keep the same
weights. Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world > 1


def init_from_env(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, device)


def wrap(module: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around ``module`` when running with more than one process."""
    if not info.enabled:
        return module
    device_ids = [torch.device(info.device).index] if info.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)


def shard(indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's share of an epoch order (padded by wrap-around so every rank does the same steps)."""
    if not info.enabled:
        return indices
    per_rank = -(-indices.numel() // info.world)
    padded = torch.cat([indices, indices[: per_rank * info.world - indices.numel()]])
    return padded[info.rank :: info.world]


def broadcast_max_param_diff(module: nn.Module) -> float:
    """Largest |w_rank - w_rank0| over all parameters (all ranks get the same answer)."""
    worst = torch.zeros(())
    for p in module.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
