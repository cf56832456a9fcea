"""Optimizers and learning-rate schedules.

The schedule is a function of training progress in [0, 1], not of the step count alone: with a
time budget, progress is whichever is further along of steps done and time spent, so the learning
rate completes its decay inside the budget instead of being cut off at its peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from training.config import OPTIMIZERS, SCHEDULES


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                    weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0,
                               weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")


def lr_factor(progress: float, schedule: str, warmup: float = 0.05) -> float:
    """Multiplier of the base learning rate at ``progress`` (0 = start, 1 = end).

    A linear warm-up over the first ``warmup`` fraction, then ``cosine`` decay to zero, ``step``
    (x0.1 at 50% and again at 75%), or ``constant``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / (warmup + 1e-3)
    if schedule == "cosine":
        rest = (progress - warmup) / max(1e-9, 1 - warmup)
        return 0.5 * (1 + math.cos(math.pi * rest))
    if schedule == "step":
        return 0.01 if progress >= 0.75 else 0.1 if progress >= 0.5 else 1.0
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """``lr`` for every group, times the group's ``lr_scale`` (a pretrained backbone's)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
