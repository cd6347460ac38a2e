"""Test-wide setup: offline model hubs, a network guard in this process and every kernel it starts."""
import os
import sys
from pathlib import Path

OFFLINE = Path(__file__).parent / "offline"

# Set before anything imports transformers/huggingface_hub; inherited by nbval's kernels.
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  HF_HUB_DISABLE_TELEMETRY="1", PYTHONHASHSEED="0")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(OFFLINE))
import sitecustomize  # noqa: E402,F401  (the guard, for this process; children import it themselves)

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny tensors gain nothing from threads, and two busy test workers on two cores thrash with them.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("torch_one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
