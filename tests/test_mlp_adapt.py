"""metafast::mlp_adapt against the per-task eager reference (float64, 1e-10),
gradcheck/gradgradcheck, opcheck, float32 tolerance, errors, CUDA vs C++."""

import importlib

import pytest
import torch

import metafast
from metafast.ops import mlp_adapt, mlp_adapt_torch, mlp_num_params
from helpers import (DEVICES, TOL, compare_query_to_reference, compare_to_reference, eager_adapt, max_rel_err,
                     random_config, random_mlp_task, requires_extension)

pytestmark = pytest.mark.kernels  # CI runs these beside other torch versions too


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("first_order", [False, True])
def test_matches_eager_reference_float64(seed, first_order, device):
    cfg = random_config(seed)
    forward_err, grad_err = compare_to_reference(cfg, first_order, device=device, seed=seed)
    assert forward_err < TOL, cfg
    assert grad_err < TOL, cfg


@pytest.mark.parametrize("first_order", [False, True])
def test_torch_fallback_matches_reference(first_order):
    cfg = random_config(3) | {"meta_sgd": True}
    torch.manual_seed(0)
    model = metafast.nn.MLP(cfg["sizes"], cfg["activation"]).double()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_()
    lrs = torch.full_like(flat, 0.1).requires_grad_()
    sx, sy, _, _ = random_mlp_task(cfg["sizes"], 3, 4, 1, cfg["loss"])
    a, l = mlp_adapt_torch(flat, lrs, 0.0, sx, sy, cfg["sizes"], cfg["steps"], cfg["activation"], cfg["loss"],
                           first_order)
    ra, rl = eager_adapt(model, flat, lrs, sx, sy, 0.0, cfg["steps"], first_order, cfg["loss"])
    got = torch.autograd.grad((a.sum() + l.sum()), [flat, lrs])
    want = torch.autograd.grad((ra.sum() + rl.sum()), [flat, lrs])
    assert max_rel_err(got, want) < TOL


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gradcheck_gradgradcheck(loss):
    # Second order only: the first-order backward deliberately is not the
    # true Jacobian (it is checked against the first-order reference above).
    first_order = False
    torch.manual_seed(1)
    sizes = [3, 4, 3]
    p = torch.randn(mlp_num_params(sizes), dtype=torch.float64, requires_grad=True)
    lrs = (torch.rand_like(p) * 0.3).requires_grad_()
    sx, sy, _, _ = random_mlp_task(sizes, 2, 3, 1, loss)
    sx.requires_grad_()

    def f(p, lrs, sx):
        return mlp_adapt(p, sx, sy, sizes, 2, lrs=lrs, activation="tanh", loss=loss, first_order=first_order)

    assert torch.autograd.gradcheck(f, (p, lrs, sx))
    assert torch.autograd.gradgradcheck(f, (p, lrs, sx))


@requires_extension
@pytest.mark.parametrize("meta_sgd", [False, True])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_opcheck(meta_sgd, loss):
    torch.manual_seed(2)
    sizes = [2, 5, 3]
    p = torch.randn(mlp_num_params(sizes), dtype=torch.float64, requires_grad=True)
    lrs = torch.rand_like(p).requires_grad_() if meta_sgd else None
    sx, sy, _, _ = random_mlp_task(sizes, 2, 4, 1, loss)
    torch.library.opcheck(torch.ops.metafast.mlp_adapt.default,
                          (p, lrs, 0.1, sx, sy, None, None, sizes, 2, "relu", loss, False))
    _, _, qx, qy = random_mlp_task(sizes, 2, 4, 3, loss)
    qx.requires_grad_()
    torch.library.opcheck(torch.ops.metafast.mlp_adapt.default,
                          (p, lrs, 0.1, sx, sy, qx, qy, sizes, 2, "tanh", loss, False))


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_float32_agrees_with_float64(device):
    # Documented tolerance: float32 kernel vs float64, relative 1e-4 on the
    # sinusoid-sized MLP with 5 steps, and within 10x of PyTorch's own float32
    # error on the same problem.
    torch.manual_seed(3)
    sizes = [1, 40, 40, 1]
    p64 = torch.randn(mlp_num_params(sizes), dtype=torch.float64, device=device) * 0.3
    sx, sy, _, _ = random_mlp_task(sizes, 4, 10, 1, "mse", device=device)
    a64, l64 = mlp_adapt(p64, sx, sy, sizes, 5, lr=0.01)
    a32, l32 = mlp_adapt(p64.float(), sx.float(), sy.float(), sizes, 5, lr=0.01)
    t32, _ = mlp_adapt_torch(p64.float(), None, 0.01, sx.float(), sy.float(), sizes, 5)
    kernel_err = max_rel_err([a32.double(), l32.double()], [a64, l64])
    torch_err = max_rel_err([t32.double()], [a64])
    assert kernel_err < 1e-4
    assert kernel_err < 10 * torch_err + 1e-6


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(activation="gelu"), "unsupported activation"),
        (dict(loss="hinge"), "unsupported loss"),
        (dict(sizes=[2, 5, 4]), "flat vector"),
        (dict(sx=torch.randn(2, 4, 3, dtype=torch.float64)), "support_x must be"),
        (dict(sx=torch.randn(2, 4, 2, dtype=torch.float32)), "dtype"),
        (dict(sy=torch.randn(2, 4, 3, dtype=torch.float64)), "cross-entropy support_y"),
        (dict(sy=torch.tensor([[0, 1, 2, 3]] * 2)), "class labels must be in"),
        (dict(sx=torch.randn(2, 0, 2, dtype=torch.float64), sy=torch.zeros(2, 0, dtype=torch.int64)), "empty"),
        (dict(steps=0), "steps"),
        (dict(p=torch.randn(33, dtype=torch.float64, device="meta")), "device|meta"),
    ],
)
def test_bad_input_names_the_problem(change, match):
    sizes = [2, 5, 3]
    args = dict(p=torch.randn(mlp_num_params(sizes), dtype=torch.float64), sx=torch.randn(2, 4, 2, dtype=torch.float64),
                sy=torch.randint(0, 3, (2, 4)), sizes=sizes, steps=1, activation="relu", loss="cross_entropy")
    args.update(change)
    with pytest.raises(ValueError, match=match):
        mlp_adapt(args["p"], args["sx"], args["sy"], args["sizes"], args["steps"], activation=args["activation"],
                  loss=args["loss"])


@requires_extension
def test_op_itself_checks_inputs():
    sizes = [2, 5, 3]
    p = torch.randn(mlp_num_params(sizes), dtype=torch.float64)
    sx = torch.randn(2, 4, 2, dtype=torch.float64)
    # The C++ checks raise ValueError too (std::invalid_argument), like the Python ones.
    with pytest.raises(ValueError, match="class labels must be in"):
        torch.ops.metafast.mlp_adapt(p, None, 0.1, sx, torch.full((2, 4), 7), None, None, sizes, 1, "relu",
                                     "cross_entropy", False)
    with pytest.raises(ValueError, match="unsupported activation"):
        torch.ops.metafast.mlp_adapt(p, None, 0.1, sx, torch.zeros(2, 4, dtype=torch.int64), None, None, sizes, 1,
                                     "elu", "cross_entropy", False)
    with pytest.raises(ValueError, match="query_x must be"):
        torch.ops.metafast.mlp_adapt(p, None, 0.1, sx, torch.zeros(2, 4, dtype=torch.int64), sx[:1],
                                     torch.zeros(1, 4, dtype=torch.int64), sizes, 1, "relu", "cross_entropy", False)


def _header_limits():
    import pathlib, re
    header = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "kernels" / "mlp" / "limits.h"
    if not header.exists():
        pytest.skip(f"{header} is not beside the tests")
    return {m[0]: int(m[1]) for m in re.findall(r"constexpr \w+ kMax(\w+) = (\d+);", header.read_text())}


@requires_extension
def test_the_python_limits_are_the_kernels():
    op_module = importlib.import_module("metafast.ops.mlp_adapt")  # the module, not the function of that name

    assert _header_limits() == {"Layers": op_module.MAX_LAYERS, "Width": op_module.MAX_WIDTH,
                                "Steps": op_module.MAX_STEPS}


@requires_extension
@pytest.mark.parametrize("limit", ["layers", "width", "steps"])
def test_one_past_each_limit_is_refused_by_both_checks(limit):
    op_module = importlib.import_module("metafast.ops.mlp_adapt")  # the module, not the function of that name

    sizes, steps = [2, 3], 1
    if limit == "layers":
        sizes = [2] * (op_module.MAX_LAYERS + 2)
    elif limit == "width":
        sizes = [2, op_module.MAX_WIDTH + 1, 3]
    else:
        steps = op_module.MAX_STEPS + 1
    p = torch.zeros(mlp_num_params(sizes), dtype=torch.float64)
    sx, sy = torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(1, 2, sizes[-1], dtype=torch.float64)
    match = {"layers": "sizes must list 2 to", "width": "layer width 1 must be in", "steps": "steps must be in"}[limit]
    with pytest.raises(ValueError, match=match):
        op_module.check_mlp_adapt_args(p, None, 0.1, sx, sy, None, None, sizes, steps, "relu", "mse")
    with pytest.raises(ValueError, match=match):
        torch.ops.metafast.mlp_adapt(p, None, 0.1, sx, sy, None, None, sizes, steps, "relu", "mse", False)


def _poison_cuda_allocator():
    # Fill the caching allocator's free blocks with NaN so that an output
    # element the kernel forgets to write shows up as NaN.
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk


def assert_close_to_scale(got, want, tol=1e-10):
    """|got − want| ≤ tol·max|want| elementwise: relative to the array's scale, as the
    lanes test compares. Values grow to ~1e204 in some second-order cases, where an
    elementwise 1e-10 is a fraction of one summation-order rounding."""
    assert got.shape == want.shape
    scale = want.abs().max().clamp_min(1.0) if want.numel() else 1.0
    err = (got - want).abs().max() if want.numel() else 0.0
    assert err <= tol * scale, f"max error {float(err):.3e} > {tol:g} x scale {float(scale):.3e}"


@pytest.mark.cuda
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("first_order", [False, True])
def test_cuda_matches_cpu_kernel(seed, first_order):
    # Same algorithm, different decomposition (the CPU sums in SIMD order, the
    # GPU one output per thread), so float64 agreement to 1e-10, not bitwise.
    cfg = random_config(100 + seed)
    cfg["sizes"] = [max(s, 1) * (1 + seed % 3) * 7 for s in cfg["sizes"]]  # wider: several lanes per row
    if cfg["loss"] == "cross_entropy":
        cfg["sizes"][-1] = min(cfg["sizes"][-1], 20)
    torch.manual_seed(seed)
    sizes = cfg["sizes"]
    p = torch.randn(mlp_num_params(sizes), dtype=torch.float64) * 0.3
    lrs = torch.rand_like(p) * 0.1 if cfg["meta_sgd"] else None
    sx, sy, qx, qy = random_mlp_task(sizes, cfg["tasks"], cfg["shots"], cfg["shots"] + 2, cfg["loss"])
    args = (lrs, 0.05, sx, sy, qx, qy, sizes, cfg["steps"], cfg["activation"], cfg["loss"], first_order)
    cpu = torch.ops.metafast.mlp_adapt(p, *args)
    _poison_cuda_allocator()
    to = lambda t: None if t is None else t.cuda()
    gpu = torch.ops.metafast.mlp_adapt(p.cuda(), *[to(a) if isinstance(a, torch.Tensor) else a for a in args])
    for c, g in zip(cpu, gpu):
        assert torch.isfinite(g).all()
        assert_close_to_scale(g.cpu(), c)
    grads = [torch.randn_like(t) for t in cpu[:4]]
    bargs = (p, lrs, 0.05, sx, sy, qx, qy, sizes, cfg["activation"], cfg["loss"], first_order, lrs is not None, True,
             True)
    cpu_b = torch.ops.metafast.mlp_adapt_backward(*grads, cpu[0], cpu[4], *bargs)
    _poison_cuda_allocator()
    gpu_b = torch.ops.metafast.mlp_adapt_backward(*[g.cuda() for g in grads], gpu[0], gpu[4],
                                                  *[to(a) if isinstance(a, torch.Tensor) else a for a in bargs])
    for c, g in zip(cpu_b, gpu_b):
        assert torch.isfinite(g).all()
        assert_close_to_scale(g.cpu(), c)


@pytest.mark.cuda
def test_cuda_global_workspace_is_deterministic_and_exact():
    # racecheck sees shared memory only: a race in the global workspace would show
    # as run-to-run differences or a mismatch with the CPU kernel.
    sizes = [64, 256, 256, 5]
    torch.manual_seed(0)
    p = torch.randn(mlp_num_params(sizes), dtype=torch.float64) * 0.1
    sx, sy, qx, qy = random_mlp_task(sizes, 40, 5, 7, "cross_entropy")
    args = (None, 0.3, sx, sy, qx, qy, sizes, 3, "tanh", "cross_entropy", False)
    cpu = torch.ops.metafast.mlp_adapt(p, *args)
    to = lambda a: a.cuda() if isinstance(a, torch.Tensor) else a
    runs = [torch.ops.metafast.mlp_adapt(p.cuda(), *map(to, args)) for _ in range(10)]
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))
    for c, g in zip(cpu, runs[0]):
        assert_close_to_scale(g.cpu(), c)


@pytest.mark.cuda
def test_cuda_large_widths_and_depth():
    # The fused path serves widths up to 256 and 5+ layers (Omniglot MLP shape).
    sizes = [784, 256, 128, 64, 64, 5]
    torch.manual_seed(0)
    p = torch.randn(mlp_num_params(sizes), dtype=torch.float64, device="cuda") * 0.05
    sx, sy, _, _ = random_mlp_task(sizes, 4, 5, 1, "cross_entropy", device="cuda")
    p.requires_grad_()
    sx.requires_grad_()
    a, l = mlp_adapt(p, sx, sy, sizes, 2, lr=0.4, loss="cross_entropy")
    ra, rl = mlp_adapt_torch(p, None, 0.4, sx, sy, sizes, 2, "relu", "cross_entropy")
    assert max_rel_err([a, l], [ra, rl]) < TOL
    w = torch.randn_like(a)
    got = torch.autograd.grad((a * w).sum() + l.sum(), [p, sx])
    want = torch.autograd.grad((ra * w).sum() + rl.sum(), [p, sx])
    assert max_rel_err(got, want) < TOL  # global-memory workspace path, second order


@requires_extension
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("first_order", [False, True])
def test_fused_query_matches_eager(seed, first_order):
    forward_err, grad_err = compare_query_to_reference(random_config(300 + seed) | {"meta_sgd": True}, first_order,
                                                       seed)
    assert forward_err < TOL
    assert grad_err < TOL


def _sizes_params_data(loss="cross_entropy", tasks=2, device="cpu"):
    sizes = [2, 5, 3]
    torch.manual_seed(4)
    p = torch.randn(mlp_num_params(sizes), dtype=torch.float64, device=device)
    sx, sy, qx, qy = random_mlp_task(sizes, tasks, 4, 3, loss, device=device)
    return sizes, p, sx, sy, qx, qy


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_opcheck_backward(loss):
    sizes, p, sx, sy, qx, qy = _sizes_params_data(loss)
    lrs = torch.rand_like(p)
    out = torch.ops.metafast.mlp_adapt(p, lrs, 0.1, sx, sy, qx, qy, sizes, 2, "tanh", loss, False)
    grads = [torch.randn_like(t) for t in out[:4]]
    for first_order in (False, True):
        torch.library.opcheck(torch.ops.metafast.mlp_adapt_backward.default,
                              (*grads, out[0], out[4], p, lrs, 0.1, sx, sy, qx, qy, sizes, "tanh", loss, first_order,
                               True, True, True))


@requires_extension
@pytest.mark.parametrize("first_order", [False, True])
def test_double_backward_when_only_inputs_require_grad(first_order):
    # Audit: "One of the differentiated Tensors does not require grad" when
    # params did not require grad but the inputs did.
    sizes, p, sx, sy, _, _ = _sizes_params_data("mse")
    sy = torch.randn(2, 4, 3, dtype=torch.float64)
    sx.requires_grad_()
    a, l = mlp_adapt(p, sx, sy, sizes, 2, lr=0.3, activation="tanh", first_order=first_order)
    (g,) = torch.autograd.grad((a ** 2).sum() + l.sum(), sx, create_graph=True)
    (gg,) = torch.autograd.grad((g ** 2).sum(), sx)
    ra, rl = mlp_adapt_torch(p, None, 0.3, sx, sy, sizes, 2, "tanh", "mse", first_order)
    (rg,) = torch.autograd.grad((ra ** 2).sum() + rl.sum(), sx, create_graph=True)
    (rgg,) = torch.autograd.grad((rg ** 2).sum(), sx)
    assert max_rel_err([g, gg], [rg, rgg]) < TOL


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("where", ["weight", "support_x", "support_y"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_nan_propagates_like_torch(where, activation, loss, device):
    # Audit: relu(NaN) became 0 in the kernel, so a NaN weight gave a finite
    # loss. Every output must be NaN exactly where the eager formula's is.
    if where == "support_y" and loss == "cross_entropy":
        pytest.skip("integer labels cannot be NaN")
    sizes, p, sx, sy, qx, qy = _sizes_params_data(loss, device=device)
    if loss == "mse":
        sy, qy = torch.randn(2, 4, 3, dtype=torch.float64, device=device), torch.randn(2, 3, 3, dtype=torch.float64,
                                                                                    device=device)
    p, sx, sy = p.clone(), sx.clone(), sy.clone()
    if where == "weight":
        p[0] = float("nan")
    elif where == "support_x":
        sx[1, 2, 0] = float("nan")
    else:
        sy[0, 1, 1] = float("nan")
    p.requires_grad_()
    got = mlp_adapt(p, sx, sy, sizes, 2, lr=0.3, activation=activation, loss=loss, query_x=qx, query_y=qy)
    want = mlp_adapt_torch(p, None, 0.3, sx, sy, sizes, 2, activation, loss, False, qx, qy)
    for g, w in zip(got, want):
        assert torch.equal(torch.isnan(g), torch.isnan(w)), (where, g, w)
    assert torch.isnan(got[1]).any()  # the NaN reached the losses
    (grad,) = torch.autograd.grad(got[3].sum(), p)
    (want_grad,) = torch.autograd.grad(want[3].sum(), p)
    assert torch.equal(torch.isnan(grad), torch.isnan(want_grad))


@requires_extension
def test_backward_checks_labels_too():
    sizes, p, sx, sy, qx, qy = _sizes_params_data()
    out = torch.ops.metafast.mlp_adapt(p, None, 0.1, sx, sy, qx, qy, sizes, 1, "relu", "cross_entropy", False)
    bad = qy.clone()
    bad[1, 2] = 3
    with pytest.raises(ValueError, match="class labels must be in"):
        torch.ops.metafast.mlp_adapt_backward(torch.ones_like(out[0]), torch.ones_like(out[1]), None,
                                              torch.ones(2, dtype=torch.float64), out[0], out[4], p, None, 0.1, sx,
                                              sy, qx, bad, sizes, "relu", "cross_entropy", False, False, False, False)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -float("inf")])
def test_rejects_non_finite_lr(lr):
    sizes, p, sx, sy, _, _ = _sizes_params_data()
    with pytest.raises(ValueError, match="lr must be finite"):
        mlp_adapt(p, sx, sy, sizes, 1, lr=lr, loss="cross_entropy")
    if metafast._extension.available():
        with pytest.raises(ValueError, match="lr must be finite"):
            torch.ops.metafast.mlp_adapt(p, None, lr, sx, sy, None, None, sizes, 1, "relu", "cross_entropy", False)


@pytest.mark.parametrize("sizes", [[2, 5.0, 3], [2, 5.5, 3], [2, True, 3], ["2", 5, 3]])
def test_rejects_non_integer_sizes(sizes):
    _, p, sx, sy, _, _ = _sizes_params_data()
    with pytest.raises(ValueError, match="layer sizes must be integers"):
        mlp_adapt(p, sx, sy, sizes, 1, loss="cross_entropy")


@requires_extension
def test_meta_kernel_checks_devices():
    # Audit: on the meta device the op accepted inputs on other devices.
    sizes, p, sx, sy, _, _ = _sizes_params_data()
    with pytest.raises(ValueError, match="is on"):
        torch.ops.metafast.mlp_adapt(p.to("meta"), None, 0.1, sx, sy.to("meta"), None, None, sizes, 1, "relu",
                                     "cross_entropy", False)
    with pytest.raises(ValueError, match="support_x must be"):
        torch.ops.metafast.mlp_adapt(p.to("meta"), None, 0.1, sx.to("meta")[..., :1], sy.to("meta"), None, None,
                                     sizes, 1, "relu", "cross_entropy", False)


@pytest.mark.cuda
def test_cuda_bad_label_gives_nan_not_a_crash():
    # The CUDA op does not read labels on the host (no sync, graph capture);
    # the kernel turns an out-of-range label into NaN for that task only.
    sizes, p, sx, sy, qx, qy = _sizes_params_data(device="cuda")
    sy = sy.clone()
    sy[1, 0] = 99
    out = torch.ops.metafast.mlp_adapt(p, None, 0.1, sx, sy, qx, qy, sizes, 2, "relu", "cross_entropy", False)
    torch.cuda.synchronize()
    assert torch.isfinite(out[1][0]).all() and torch.isnan(out[1][1]).all()
    with pytest.raises(ValueError, match="class labels"):  # the Python API does check, outside capture
        mlp_adapt(p, sx, sy, sizes, 2, loss="cross_entropy")


@pytest.mark.cuda
@pytest.mark.parametrize("sizes, dtype, meta_sgd", [
    (None, torch.float32, False),                    # the small default case
    ([1, 40, 40, 1], torch.float64, True),           # > 48 KB of shared memory in float64: the opt-in path
    ([64, 256, 256, 5], torch.float32, False),       # the global workspace
])
def test_cuda_graph_captures_a_fused_meta_iteration(sizes, dtype, meta_sgd):
    if sizes is None:
        sizes, p, sx, sy, qx, qy = _sizes_params_data(device="cuda")
        loss = "cross_entropy"
    else:
        loss = "mse" if sizes[-1] == 1 else "cross_entropy"
        torch.manual_seed(0)
        p = torch.randn(mlp_num_params(sizes), dtype=dtype, device="cuda") * 0.1
        sx, sy, qx, qy = random_mlp_task(sizes, 6, 5, 7, loss, dtype=dtype, device="cuda")
    p.requires_grad_()
    lrs = torch.full_like(p, 0.05).requires_grad_() if meta_sgd else None

    def meta_step():
        _, _, _, query_losses = mlp_adapt(p, sx, sy, sizes, 3, lr=0.2, lrs=lrs, loss=loss, query_x=qx, query_y=qy)
        (g,) = torch.autograd.grad(query_losses.mean(), p)
        return g

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            meta_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = meta_step()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, meta_step(), rtol=0, atol=0)
