import pytest
import torch

import metafast


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (absolute when b is zero)."""
    denom = b.norm().item()
    return (a - b).norm().item() / (denom if denom > 0 else 1.0)


def max_rel_err(xs, ys) -> float:
    return max(rel_err(x, y) for x, y in zip(xs, ys))


requires_extension = pytest.mark.skipif(not metafast._extension.available(), reason="metafast._C not built")
# One test body for every device: parametrize with DEVICES (CUDA entries are
# skipped without a GPU by the "cuda" mark).
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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


def random_mlp_task(sizes, tasks, shots, queries, loss, dtype=torch.float64, device="cpu", generator=None):
    """Random support/query tensors for an MLP of the given widths."""
    g = generator
    sx = torch.randn(tasks, shots, sizes[0], dtype=dtype, device=device, generator=g)
    qx = torch.randn(tasks, queries, sizes[0], dtype=dtype, device=device, generator=g)
    if loss == "mse":
        sy = torch.randn(tasks, shots, sizes[-1], dtype=dtype, device=device, generator=g)
        qy = torch.randn(tasks, queries, sizes[-1], dtype=dtype, device=device, generator=g)
    else:
        sy = torch.randint(0, sizes[-1], (tasks, shots), device=device, generator=g)
        qy = torch.randint(0, sizes[-1], (tasks, queries), device=device, generator=g)
    return sx, sy, qx, qy
