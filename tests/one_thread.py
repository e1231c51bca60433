"""An autouse fixture for tests of small tensors (64x64 clips): one torch thread. One is fastest for them, and on a
busy machine several threads spin for milliseconds per operation (a 16-frame warp: 13 ms on one, ~1 s on two).
Use: ``from one_thread import one_thread  # noqa: F401`` in the test module."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
