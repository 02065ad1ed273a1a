"""A server over the small trained classifier (``trained``, in tests/conftest.py), shared by the
serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcycle.serve.process import ServerProcess


@pytest.fixture(scope="session")
def server(trained: Path):
    """One server for the read-only tests: batching on, a short batch delay."""
    with ServerProcess([trained], "serve.max_batch_delay_ms=20", "serve.max_images=8") as process:
        yield process
