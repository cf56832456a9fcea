"""``twinstream train --device auto|cpu|cuda``: the flag, and where auto and cuda lead."""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig
from training.train import resolve_device
from twinstream.cli.main import build_parser
from twinstream.errors import InputError


def test_the_train_command_has_a_device_flag_with_its_choices():
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--device", "cpu"])
    assert getattr(args, "config:device") == "cpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--device", "gpu"])


def test_a_config_refuses_an_unknown_device():
    with pytest.raises(InputError, match="--device must be one of auto, cpu, cuda"):
        TrainConfig(data="d", out="o", device="gpu").check()


def test_auto_follows_torch_and_cuda_without_a_gpu_is_a_clear_error():
    device, line = resolve_device("auto")
    assert resolve_device("cpu")[0].type == "cpu"
    if torch.cuda.is_available():
        assert device.type == "cuda" and resolve_device("cuda")[0].type == "cuda"
        return
    assert device.type == "cpu" and "no CUDA device" in line  # this machine: a CPU build
    with pytest.raises(InputError, match="--device cuda: torch sees no CUDA device"):
        resolve_device("cuda")


def test_cuda_under_torchrun_is_refused_rather_than_half_working():
    if torch.cuda.is_available():
        with pytest.raises(InputError, match="several processes"):
            resolve_device("cuda", distributed=True)
    assert resolve_device("auto", distributed=True)[0].type == "cpu"
