"""Data parallelism under torchrun: process group, device, the DDP wrapper, rank-0 duties.

    torchrun --nproc-per-node 2 -m training.sft --config sft.json

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op and the
loops run as one process. NCCL on CUDA, gloo on CPU (the tests run world size 2 on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistributedContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str | None = None  # None: leave the config's choice

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


def setup_distributed() -> DistributedContext:
    """Join the process group torchrun describes (once per process); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    return DistributedContext(rank, world, local_rank, f"cuda:{local_rank}" if cuda else "cpu")


def wrap_for_data_parallel(transformer: torch.nn.Module, dist: DistributedContext) -> torch.nn.Module:
    """DistributedDataParallel over the trainable (LoRA) weights when there is more than one rank:
    it broadcasts rank 0's weights and averages the gradients in backward. The last block's text
    stream feeds nothing (only the image tokens leave the transformer), so its LoRA weights get no
    gradient: DDP has to look for unused parameters."""
    if dist.world == 1:
        return transformer
    device_ids = [dist.local_rank] if transformer.device.type == "cuda" else None
    return DistributedDataParallel(transformer, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
