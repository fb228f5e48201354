"""Every CPU decomposition of metafast::mlp_adapt against the eager reference
(float64, 1e-10): task packs (one task per SIMD lane, kernels/core/task_pack.h,
kernels/mlp/pack.h) and
the per-task path, at each x86 level the kernels are compiled for, with task
counts that fill, split and overrun the packs (8 float64 tasks a pack with
AVX-512, 4 with AVX2, 2 with SSE2)."""
import pytest
import torch
from helpers import requires_extension
from helpers import (
    TOL,
    compare_query_to_reference,
    compare_to_reference,
    random_config,
)

import metafast
from metafast.ops import mlp_adapt, mlp_adapt_torch

pytestmark = pytest.mark.kernels  # CI runs these beside other torch versions too

KERNELS = ["packed", "per-task"]
ISAS = ["native", "avx2", "baseline"]  # METAFAST_CPU_ISA can only lower the CPU's own level


@pytest.fixture
def cpu_path(monkeypatch, request):
    kernel, isa = request.param
    monkeypatch.setenv("METAFAST_CPU_KERNEL", kernel)
    if isa == "native":
        monkeypatch.delenv("METAFAST_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("METAFAST_CPU_ISA", isa)
    return kernel, isa


PATHS = [(k, i) for k in KERNELS for i in ISAS]


@requires_extension
@pytest.mark.parametrize("cpu_path", PATHS, indirect=True, ids=[f"{k}-{i}" for k, i in PATHS])
@pytest.mark.parametrize("tasks", [1, 5, 8, 9, 17, 33])
@pytest.mark.parametrize("first_order", [False, True])
def test_cpu_paths_match_eager(cpu_path, tasks, first_order):
    cfg = random_config(700 + tasks) | {"tasks": tasks}
    forward_err, grad_err = compare_to_reference(cfg, first_order, seed=tasks)
    assert forward_err < TOL, cfg
    assert grad_err < TOL, cfg


@requires_extension
@pytest.mark.parametrize("cpu_path", PATHS, indirect=True, ids=[f"{k}-{i}" for k, i in PATHS])
@pytest.mark.parametrize("tasks", [3, 19])
def test_cpu_paths_fused_query_match_eager(cpu_path, tasks):
    cfg = random_config(800 + tasks) | {"tasks": tasks, "meta_sgd": True}
    forward_err, grad_err = compare_query_to_reference(cfg, False, seed=tasks)
    assert forward_err < TOL, cfg
    assert grad_err < TOL, cfg


@requires_extension
@pytest.mark.parametrize("cpu_path", PATHS, indirect=True, ids=[f"{k}-{i}" for k, i in PATHS])
def test_cpu_paths_float32_within_torchs_own_error(cpu_path):
    """The sinusoid problem in float32 (21 tasks: a full and a partial pack of
    16): the kernel's meta-gradient is as close to the float64 one as torch's
    own float32 computation of the same formula is (within 10x)."""
    torch.manual_seed(0)
    sizes, tasks, steps = [1, 40, 40, 1], 21, 5
    flat64 = torch.cat([p.detach().reshape(-1) for p in metafast.nn.MLP(sizes, "relu").double().parameters()])
    x = torch.rand(tasks, 10, 1, dtype=torch.float64) * 10 - 5
    y = torch.sin(x + torch.rand(tasks, 1, 1, dtype=torch.float64))
    qx = torch.rand(tasks, 10, 1, dtype=torch.float64) * 10 - 5
    qy = torch.sin(qx)

    def meta_grad(dtype, fused):
        flat = flat64.to(dtype).requires_grad_()
        args = (x.to(dtype), y.to(dtype), sizes, steps)
        if fused:
            *_, ql = mlp_adapt(flat, *args, lr=0.01, activation="relu", loss="mse", first_order=False,
                               query_x=qx.to(dtype), query_y=qy.to(dtype))
        else:
            *_, ql = mlp_adapt_torch(flat, None, 0.01, *args, "relu", "mse", False, qx.to(dtype), qy.to(dtype))
        return torch.autograd.grad(ql.mean(), flat)[0].double()

    exact = meta_grad(torch.float64, False)
    scale = exact.abs().max()
    torch_err = (meta_grad(torch.float32, False) - exact).abs().max() / scale
    kernel_err = (meta_grad(torch.float32, True) - exact).abs().max() / scale
    assert (meta_grad(torch.float64, True) - exact).abs().max() / scale < TOL
    assert kernel_err <= 10 * max(torch_err, torch.finfo(torch.float32).eps), (kernel_err, torch_err)
