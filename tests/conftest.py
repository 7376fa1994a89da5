"""Test harness.

* Triton kernels run on CPU tensors through the Triton interpreter: TRITON_INTERPRET=1 is set
  here, before anything imports triton (set TRITON_INTERPRET=0 yourself to opt out).
* Tests marked ``gpu`` need a CUDA GPU and are skipped without one.
* Tests marked ``slow`` (training runs of minutes) are skipped unless selected with a ``-m``
  expression naming them (``python -m pytest -m slow``) or ``FASTGEN_RUN_SLOW=1``.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    run_slow = "slow" in (config.getoption("-m") or "") or os.environ.get("FASTGEN_RUN_SLOW") == "1"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow training run: select with -m slow")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
