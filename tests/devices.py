"""The devices a test runs on: the CPU always, CUDA where a device is visible (marked `gpu`,
so that `pytest -m gpu` runs exactly the GPU cases). No heavy imports: the GPU check runs
these tests on machines without PyAV, with `--noconftest`."""

from __future__ import annotations

import pytest
import torch

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, NO_CUDA])
DEVICES = ["cpu", CUDA]
