"""DDP trains as one (issue 14): two ranks make the same step as one process on the
concatenated batch (every loss, batch norm included), and a torchrun run ends with identical
weights on both ranks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from training.distributed import Distributed
from training.losses import LOSSES, build_loss
from training.models import EncoderConfig, build_encoder
from training.train import Objective
from twinstream.stack import free_port

pytestmark = pytest.mark.slow
WORLD = 2


def _objective(loss_name: str) -> Objective:
    torch.manual_seed(0)  # the same initial weights everywhere, as the trainer does
    encoder = build_encoder(EncoderConfig("tiny", 3, 16, 16, 16, 0))
    return Objective(encoder, build_loss(loss_name, 16, seed=0))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight images, two per class; rank r gets the r-th half (classes 2r and 2r+1)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=generator), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(x, labels).backward()
    optimizer.step()


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        dist = Distributed(rank, WORLD)
        x, labels = _batch()
        half = len(labels) // WORLD
        mine = slice(rank * half, (rank + 1) * half)
        for name in LOSSES:
            objective = _objective(name)
            objective.gather = dist.gather
            _step(dist.wrap(objective), x[mine], labels[mine])
            torch.save(objective.state_dict(), Path(out) / f"{name}-rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_one_ddp_step_equals_the_one_process_step_on_the_concatenated_batch(tmp_path):
    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    x, labels = _batch()
    for name in LOSSES:
        single = _objective(name)
        before = {k: v.clone() for k, v in single.state_dict().items()}
        _step(single, x, labels)
        expected = single.state_dict()
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(WORLD)]
        moved = [k for k, v in expected.items() if v.is_floating_point()
                 and not torch.equal(v, before[k])]
        assert len(moved) > 10, f"{name}: the step changed almost nothing, proving nothing"
        for key, want in expected.items():
            for r, state in enumerate(ranks):
                where = f"{name} {key} rank {r}"
                torch.testing.assert_close(state[key], want, rtol=1e-4, atol=1e-5,
                                           msg=lambda m, where=where: f"{where}: {m}")
        for key in expected:  # and the two ranks agree with each other exactly
            assert torch.equal(ranks[0][key], ranks[1][key]), f"{name} {key}"
