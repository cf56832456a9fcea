"""Fixtures shared by unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a busy 2-core machine two spin-wait for each other (a
    MobileNet's forward pass took 100x longer with two)."""
    import torch  # only the modules that ask for it load torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
