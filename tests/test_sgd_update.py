"""metafast::sgd_update: values, task-dimension rule, autograd to second order, opcheck, errors."""
import pytest
import torch

import metafast
from metafast.ops import sgd_update
from helpers import DEVICES, requires_extension

pytestmark = pytest.mark.kernels  # CI runs these beside other torch versions too


def _lists(dtype=torch.float64, tasks=None, lrs=False, device="cpu"):
    torch.manual_seed(0)
    shapes = [(3, 4), (4,), (2, 3, 2), (1,)]
    lead = () if tasks is None else (tasks,)
    params = [torch.randn(s, dtype=dtype, device=device) for s in shapes]
    grads = [torch.randn(lead + s, dtype=dtype, device=device) for s in shapes]
    rates = [torch.rand(s, dtype=dtype, device=device) for s in shapes] if lrs else None
    return params, grads, rates


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tasks", [None, 3])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_values_match_formula(tasks, meta_sgd, device):
    params, grads, lrs = _lists(tasks=tasks, lrs=meta_sgd, device=device)
    out = sgd_update(params, grads, 0.3, lrs)
    for i, (p, g) in enumerate(zip(params, grads)):
        rate = 0.3 if lrs is None else lrs[i]
        expected = p - rate * g
        assert out[i].shape == expected.shape
        torch.testing.assert_close(out[i], expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision(dtype, device):
    params, grads, _ = _lists(dtype=dtype, tasks=2, device=device)
    out = sgd_update(params, grads, 0.1)
    for o, p, g in zip(out, params, grads):
        expected = (p.float() - 0.1 * g.float()).to(dtype)
        torch.testing.assert_close(o, expected)


def test_empty_list():
    assert sgd_update([], [], 0.1) == []


@requires_extension
def test_gradcheck_and_gradgradcheck():
    params, grads, lrs = _lists(tasks=2, lrs=True)
    inputs = [t.requires_grad_() for t in params + grads + lrs]
    n = len(params)

    def f(*ts):
        return tuple(torch.ops.metafast.sgd_update(list(ts[:n]), list(ts[n:2 * n]), 0.0, list(ts[2 * n:])))

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)

    def g(*ts):
        return tuple(torch.ops.metafast.sgd_update(list(ts[:n]), list(ts[n:]), 0.7, None))

    assert torch.autograd.gradcheck(g, inputs[: 2 * n])
    assert torch.autograd.gradgradcheck(g, inputs[: 2 * n])


@requires_extension
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_opcheck(meta_sgd):
    params, grads, lrs = _lists(tasks=2, lrs=meta_sgd)
    for t in params + grads + (lrs or []):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.metafast.sgd_update.default, (params, grads, 0.5, lrs))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ([torch.ones(3)], [torch.ones(3), torch.ones(3)], None), "1 params but 2 grads"),
        (lambda: ([torch.ones(3)], [torch.ones(4)], None), "shapes"),
        (lambda: ([torch.ones(3)], [torch.ones(2, 4)], None), "shapes"),
        (lambda: ([torch.ones(3)], [torch.ones(3, dtype=torch.float64)], None), "dtypes"),
        (lambda: ([torch.ones(3, dtype=torch.int64)], [torch.ones(3, dtype=torch.int64)], None), "float32, float64"),
        (lambda: ([torch.ones(3)], [torch.ones(3)], [torch.ones(3), torch.ones(3)]), "1 params but 2 lrs"),
        (lambda: ([torch.ones(3)], [torch.ones(3)], [torch.ones(4)]), "shapes"),
        (lambda: ([torch.ones(3)], [torch.ones(3, device="meta")], None), "devices"),
        # grads define the result's shape: a param with a task dimension the grad lacks is an error
        (lambda: ([torch.ones(2, 3)], [torch.ones(3)], None), "shapes"),
        (lambda: ([torch.ones(3)], [torch.ones(2, 3)], [torch.ones(5, 2, 3)]), "shapes"),
    ],
)
def test_bad_input_names_the_problem(make, match):
    params, grads, lrs = make()
    with pytest.raises(ValueError, match=match):
        sgd_update(params, grads, 0.1, lrs)


def test_missing_entries_are_type_errors():
    with pytest.raises(TypeError, match="entry 0: grad is a NoneType"):
        sgd_update([torch.ones(3)], [None], 0.1)
    with pytest.raises(TypeError, match="entry 0: param is a NoneType"):
        sgd_update([None], [torch.ones(3)], 0.1)


@requires_extension
def test_op_itself_checks_shapes():
    # Called directly (bypassing the Python wrapper), the C++ checks speak.
    with pytest.raises(ValueError, match="leading task dimension"):
        torch.ops.metafast.sgd_update([torch.ones(3)], [torch.ones(4)], 0.1, None)
    with pytest.raises(ValueError, match="got 1 params but 2 grads"):
        torch.ops.metafast.sgd_update([torch.ones(3)], [torch.ones(3), torch.ones(3)], 0.1, None)


@pytest.mark.cuda
def test_cuda_matches_cpu_many_tensors():
    # More entries than one launch holds, mixed dtypes, task dimensions, Meta-SGD rates.
    torch.manual_seed(0)
    params, grads, lrs = [], [], []
    for i in range(70):
        dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][i % 4]
        shape = (i % 5 + 1, 7)
        params.append(torch.randn(shape, dtype=dtype))
        grads.append(torch.randn((3,) + shape, dtype=dtype))
        lrs.append(torch.rand(shape, dtype=dtype))
    cpu = sgd_update(params, grads, 0.0, lrs)
    gpu = sgd_update([p.cuda() for p in params], [g.cuda() for g in grads], 0.0, [r.cuda() for r in lrs])
    for c, d in zip(cpu, gpu):
        torch.testing.assert_close(d.cpu(), c)


FLOAT8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


@requires_extension
@pytest.mark.parametrize("device", DEVICES + [pytest.param("meta", id="meta")])
@pytest.mark.parametrize("dtype", FLOAT8 + [torch.int32])
def test_unsupported_dtypes_are_rejected_on_every_device(dtype, device):
    # Audit: float8 passed the check but the CUDA kernel wrote nothing
    # (uninitialised output). Every device now refuses what it cannot compute.
    p = torch.zeros(4, device=device).to(dtype)
    with pytest.raises(ValueError, match="must be float32, float64, float16 or bfloat16"):
        torch.ops.metafast.sgd_update([p], [p], 0.1, None)


@pytest.mark.parametrize("lr", [float("nan"), float("inf")])
def test_non_finite_lr_is_rejected(lr):
    params, grads, _ = _lists()
    with pytest.raises(ValueError, match="lr must be finite"):
        sgd_update(params, grads, lr)
    if metafast._extension.available():
        with pytest.raises(ValueError, match="lr must be finite"):
            torch.ops.metafast.sgd_update(params, grads, lr, None)


@requires_extension
def test_meta_kernel_checks_devices():
    with pytest.raises(ValueError, match="mixes devices"):
        torch.ops.metafast.sgd_update([torch.ones(3, device="meta")], [torch.ones(3)], 0.1, None)


def test_shape_error_is_readable():
    with pytest.raises(ValueError, match=r"param \[3\], grad \[4\]"):
        sgd_update([torch.ones(3)], [torch.ones(4)], 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_lr_is_differentiated(device):
    # learn2learn differentiates a tensor learning rate; float(lr) used to drop it.
    params, grads, _ = _lists(tasks=2, device=device)
    lr = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)
    out = sgd_update(params, grads, lr)
    (got,) = torch.autograd.grad(sum((o ** 2).sum() for o in out), lr)
    want = sum((2 * (p - 0.3 * g) * -g).sum() for p, g in zip(params, grads))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@requires_extension
def test_op_with_empty_lists_returns_empty():
    # Audit: no tensor to dispatch on gave NotImplementedError.
    assert torch.ops.metafast.sgd_update([], [], 0.1, None) == []
    assert torch.ops.metafast.sgd_update([], [], 0.1, []) == []
