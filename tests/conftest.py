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
