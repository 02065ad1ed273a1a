"""One torch thread for the trials, in this process and in the commands it starts: the models are
tiny, and on a shared machine a second thread mostly spins waiting for the first."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by torch in every subprocess at import
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
