"""Data-parallel training across processes started by ``torchrun`` (DDP).

``torchrun --nproc_per_node 2 -m twinstream train ...`` starts two processes; each reads
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set by torchrun, joins the group (gloo on CPU, nccl on
GPUs), and trains on its own class-balanced batches. Rank 0 validates, writes checkpoints and
reports; the others wait for it at the end of each epoch.

The ranks train as one process would on the concatenated batch, not as W copies that average
their own losses: a metric-learning loss mines pairs and triplets across the whole batch, and
batch normalisation normalises by the whole batch's statistics.
- ``gather``: every rank computes the loss on the embeddings and labels of all ranks
  (``torch.distributed.nn`` all-gather, whose backward sums each slice's gradient over the ranks,
  i.e. W times the one-process gradient on that slice); DDP's average over the ranks then gives
  exactly the one-process gradient, for the encoder and for the loss's own parameters.
- ``GlobalBatchNorm2d``: batch statistics summed over the ranks (differentiable all-reduce), as
  ``torch.nn.SyncBatchNorm`` does on GPUs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.distributed.nn.functional as dist_fn
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
        """DDP around ``module`` with its batch norms made global (in place, same state dict)."""
        if not self.enabled:
            return module
        globalize_batch_norm(module)
        return nn.parallel.DistributedDataParallel(module)

    def gather(self, embeddings: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's embeddings (differentiable, rank order) and labels, concatenated."""
        if not self.enabled:
            return embeddings, labels
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world_size)]
        torch_dist.all_gather(sizes, torch.tensor([len(labels)]))
        if len({int(s) for s in sizes}) != 1:  # all_gather needs equal shapes
            raise RuntimeError(f"ranks have different batch sizes: {[int(s) for s in sizes]}")
        all_labels = [torch.empty_like(labels) for _ in range(self.world_size)]
        torch_dist.all_gather(all_labels, labels.contiguous())
        return torch.cat(dist_fn.all_gather(embeddings.contiguous())), torch.cat(all_labels)

    def in_sync(self, module: nn.Module) -> bool:
        """Whether every rank holds exactly the same parameters and buffers as rank 0."""
        if not self.enabled:
            return True
        flat = torch.cat([t.detach().double().flatten() for t in module.state_dict().values()
                          if t.is_floating_point()])
        reference = flat.clone()
        torch_dist.broadcast(reference, src=0)
        same = torch.tensor([int(torch.equal(flat, reference))])
        torch_dist.all_reduce(same, op=torch_dist.ReduceOp.MIN)
        return bool(same.item())

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


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the batch of all ranks (CPU and
    GPU; ``torch.nn.SyncBatchNorm`` refuses CPU modules). Same parameters and buffers as
    ``BatchNorm2d``, so checkpoints and export do not see the difference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_available() and torch_dist.is_initialized()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = dist_fn.all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels:2 * channels] / total - mean * mean  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                unbiased = var * total / max(float(total) - 1, 1.0)
                m = self.momentum if self.momentum is not None \
                    else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * unbiased)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def globalize_batch_norm(module: nn.Module) -> nn.Module:
    """Turn every ``BatchNorm2d`` inside ``module`` into a ``GlobalBatchNorm2d`` (in place)."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = GlobalBatchNorm2d
    return module
