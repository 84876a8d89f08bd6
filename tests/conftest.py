import os

import pytest
import torch

os.environ.setdefault("MM2LATENT_NO_PROGRESS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny test models run much faster single-threaded (and the CPU may be shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
