"""Root pytest configuration: applies to tests/ and to nbval's run over notebooks/.

Notebooks run at the smoke profile and write their run folders to a temporary directory,
never into the checkout (nbval starts each kernel with this environment).
"""
import os
import tempfile

import pytest

os.environ.setdefault("PRUNELAB_PROFILE", "smoke")
os.environ.setdefault("PRUNELAB_RUNS", tempfile.mkdtemp(prefix="prunelab-test-runs-"))
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
