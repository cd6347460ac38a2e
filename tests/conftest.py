"""Fixtures of the unit tests (the test-wide setup is in the repository root's conftest.py)."""
import pytest


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny tensors gain nothing from threads, and two busy test workers on two cores thrash with them.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("torch_one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
