"""Data-parallel training across processes started by ``torchrun`` (DDP).

``torchrun --nproc_per_node 2 -m twinstream train ...`` starts two processes; each reads
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set by torchrun, joins the group (gloo on CPU, nccl on
GPUs), trains on its own class-balanced batches, and gradients are averaged every step. Rank 0
validates, writes checkpoints and reports; the others wait for it at the end of each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_torchrun(cls) -> Distributed:
        """Join the process group torchrun set up (its variables are read by ``env://``)."""
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(torch_dist.get_rank(), torch_dist.get_world_size())

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.enabled:
            return module
        return nn.parallel.DistributedDataParallel(module)

    def from_main(self, value: float) -> float:
        """Rank 0's value on every rank (clocks differ; decisions like stopping must not)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch_dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def close(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
