"""pytest hooks only; shared helpers live in helpers.py."""
import pytest
import torch


def pytest_configure(config):
    # Registered here too, so the suite also runs outside the repository
    # (CI runs a copy of tests/ against the installed wheel).
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: longer end-to-end runs")
    config.addinivalue_line("markers", "kernels: the compiled ops' tests (CI runs them beside other torch versions)")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
