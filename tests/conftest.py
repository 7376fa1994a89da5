"""Test harness.

* Triton kernels run on CPU tensors through the Triton interpreter: TRITON_INTERPRET=1 is set
  here, before anything imports triton (set TRITON_INTERPRET=0 yourself to opt out).
* Tests marked ``gpu`` need a CUDA GPU and are skipped without one.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
