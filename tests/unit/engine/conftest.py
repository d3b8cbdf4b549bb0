"""Engine tests: `engine_kit` importable from the test modules, quiet transformers, one thread."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import engine_kit`

logging.set_verbosity_error()
warnings.filterwarnings("ignore", module="transformers")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
