"""Suite-wide settings: tests run tiny models, which are fastest (and steadiest on a shared
2-core machine) with one intra-op thread; oversubscribed threads made them up to 30x slower."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
