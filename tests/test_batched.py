"""BatchedMAML: every backend equals the per-task eager reference in float64
(first and second order, MAML, Meta-SGD, ANIL; MSE and cross-entropy)."""
import random
import warnings

import pytest
import torch
from torch import nn

import metafast
from metafast import BatchedMAML
from metafast.reference import meta_loss
from helpers import max_rel_err, random_mlp_task, requires_extension

TOL = 1e-10


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def check_against_reference(model, loss, backend, first_order, meta_sgd, steps, sizes, tasks=3, shots=4, queries=3,
                            lr=0.1, adapt="all", seed=0):
    torch.manual_seed(seed)
    meta = BatchedMAML(model, inner_lr=lr, inner_steps=steps, first_order=first_order, meta_sgd=meta_sgd, loss=loss,
                       backend=backend, adapt=adapt).double()
    if meta_sgd:  # distinct rates per element, so rate gradients are not trivially symmetric
        with torch.no_grad():
            for r in meta.inner_lrs:
                r.uniform_(0.5 * lr, 1.5 * lr)
    sx, sy, qx, qy = random_mlp_task(sizes, tasks, shots, queries, loss)
    params = list(model.parameters()) + (list(meta.inner_lrs) if meta_sgd else [])
    out = meta(sx, sy, qx, qy)
    got = _grads(out.loss, params)
    adapt_names = meta.adapt_names
    ref = meta_loss(model, sx, sy, qx, qy, lr, steps, first_order, loss,
                    lrs=list(meta.inner_lrs) if meta_sgd else None, adapt_names=adapt_names)
    want = _grads(ref, params)
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    assert max_rel_err(got, want) < TOL
    return meta, out


def random_mlp(seed):
    rng = random.Random(seed)
    depth = rng.randint(1, 4)
    sizes = [rng.randint(2, 10) for _ in range(depth + 1)]
    return sizes, rng.choice(["relu", "tanh"]), rng.choice(["mse", "cross_entropy"]), rng.randint(1, 4)


BACKENDS = ["torch", pytest.param("fused", marks=requires_extension)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_mlp_meta_gradients_equal_reference(backend, seed, first_order, meta_sgd):
    sizes, act, loss, steps = random_mlp(seed)
    torch.manual_seed(seed)
    model = metafast.nn.MLP(sizes, act).double()
    meta, _ = check_against_reference(model, loss, backend, first_order, meta_sgd, steps, sizes, seed=seed)
    assert meta.backend_used == backend


@pytest.mark.parametrize("first_order", [False, True])
def test_any_module_on_torch_backend(first_order):
    # A model the fused kernel does not serve: auto falls back (and says why once).
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 3)
            self.norm = nn.LayerNorm(6)

        def forward(self, x):
            return x + self.b(torch.nn.functional.gelu(self.norm(self.a(x))))

    torch.manual_seed(0)
    model = Residual().double()
    with pytest.warns(RuntimeWarning, match="torch backend"):
        meta, _ = check_against_reference(model, "mse", "auto", first_order, True, 2, [3, 3])
    assert meta.backend_used == "torch"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_anil_head_only(backend, first_order, meta_sgd):
    torch.manual_seed(0)
    sizes = [4, 8, 6, 3]
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    meta, _ = check_against_reference(model, "cross_entropy", backend, first_order, meta_sgd, 2, sizes, adapt="head")
    assert meta.adapt_names == ["4.weight", "4.bias"]
    assert meta.backend_used == backend


@requires_extension
def test_auto_picks_fused_for_mlps():
    model = metafast.nn.MLP([1, 40, 40, 1])
    meta = BatchedMAML(model)
    b = metafast.data.Sinusoid().sample(5, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta(b.support_x, b.support_y, b.query_x, b.query_y)
    assert meta.backend_used == "fused"


def test_outputs_and_adapt_predict():
    torch.manual_seed(0)
    model = metafast.nn.MLP([2, 8, 3]).double()
    meta = BatchedMAML(model, inner_lr=0.5, inner_steps=3, loss="cross_entropy")
    sx, sy, qx, qy = random_mlp_task([2, 8, 3], 4, 6, 5, "cross_entropy")
    out = meta(sx, sy, qx, qy)
    assert out.query_output.shape == (4, 5, 3)
    assert out.support_losses.shape == (4, 3)
    assert 0.0 <= out.accuracy.item() <= 1.0
    params = meta.adapt(sx, sy)
    assert set(params) == {n for n, _ in model.named_parameters()}
    assert params["0.weight"].shape == (4, 8, 2)
    torch.testing.assert_close(meta.predict(params, qx), out.query_output, rtol=1e-12, atol=1e-12)
    # Inner steps lower the support loss of every task on this easy problem.
    assert (out.support_losses[:, -1] < out.support_losses[:, 0]).all()
    # Meta-SGD rates are parameters of the module.
    ms = BatchedMAML(model, meta_sgd=True)
    n_model = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in ms.parameters()) == 2 * n_model


def test_no_grad_evaluation_returns_detached():
    model = metafast.nn.MLP([1, 8, 1])
    meta = BatchedMAML(model, inner_steps=2)
    b = metafast.data.Sinusoid().sample(3, 5, 5)
    with torch.no_grad():
        params = meta.adapt(b.support_x, b.support_y, steps=4)
        out = meta(b.support_x, b.support_y, b.query_x, b.query_y)
    assert not out.loss.requires_grad and not any(p.requires_grad for p in params.values())


# ------------------------------------------------------------------ errors
def _setup(loss="mse"):
    model = metafast.nn.MLP([2, 4, 3]).double()
    return BatchedMAML(model, loss=loss), random_mlp_task([2, 4, 3], 3, 4, 2, loss)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda d: d.update(qx=d["qx"][:2], qy=d["qy"][:2]), ValueError, "task dimensions disagree"),
        (lambda d: d.update(sy=d["sy"][:, :3]), ValueError, "examples per task"),
        (lambda d: d.update(sx=d["sx"][:, :0], sy=d["sy"][:, :0]), ValueError, "empty support set"),
        (lambda d: d.update(sx=d["sx"].long()), TypeError, "floating point"),
        (lambda d: d.update(sx=d["sx"].float()), TypeError, "dtype"),
        (lambda d: d["sx"].__setitem__((0, 0, 0), float("nan")), ValueError, "NaN or inf"),
        (lambda d: d["qy"].__setitem__((1, 0, 0), float("inf")), ValueError, "NaN or inf"),
        (lambda d: d.update(sx=d["sx"].to("meta")), ValueError, "is on meta"),
        (lambda d: d.update(qx=d["qx"][:, :0], qy=d["qy"][:, :0]), ValueError, "empty query set"),
        (lambda d: d.update(qx=d["qx"][..., :1]), ValueError, "query examples have shape"),
        (lambda d: d.update(sy=d["sy"].float()), TypeError, "MSE support_y has dtype"),
    ],
)
def test_bad_input_names_the_problem(mutate, exc, match):
    meta, (sx, sy, qx, qy) = _setup()
    d = dict(sx=sx, sy=sy, qx=qx, qy=qy)
    mutate(d)
    with pytest.raises(exc, match=match):
        meta(d["sx"], d["sy"], d["qx"], d["qy"])


def test_bad_labels_and_targets():
    meta, (sx, sy, qx, qy) = _setup("cross_entropy")
    with pytest.raises(ValueError, match="class labels"):
        meta(sx, sy + 5, qx, qy)
    with pytest.raises(TypeError, match="int64 class indices"):
        meta(sx, sy.double(), qx, qy)
    with pytest.raises(TypeError, match="int64 class indices"):
        meta(sx, sy.int(), qx, qy)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        meta.adapt(sx, sy, steps=0)
    with pytest.raises(TypeError, match="predict: x is"):
        meta.predict(meta.adapt(sx, sy), qx.float())
    meta, (sx, sy, qx, qy) = _setup("mse")
    with pytest.raises(ValueError, match="no broadcasting|shape"):
        meta(sx, sy[..., :1], qx, qy[..., :1])


def test_bad_construction():
    model = metafast.nn.MLP([2, 4, 3])
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        BatchedMAML(model, loss="hinge")
    with pytest.raises(ValueError, match="no parameters"):
        BatchedMAML(nn.ReLU())
    with pytest.raises(ValueError, match="unknown backend"):
        BatchedMAML(model, backend="jax")
    with pytest.raises(ValueError, match="inner_steps"):
        BatchedMAML(model, inner_steps=0)


def test_fused_backend_refuses_what_it_cannot_serve():
    model = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 1))
    meta = BatchedMAML(model, backend="fused")
    b = metafast.data.Sinusoid().sample(2, 3, 3)
    with pytest.raises(ValueError, match="cannot serve.*GELU"):
        meta(b.support_x.expand(-1, -1, 2).contiguous(), b.support_y, b.query_x.expand(-1, -1, 2).contiguous(),
             b.query_y)
    with pytest.raises(ValueError, match="custom loss"):
        BatchedMAML(metafast.nn.MLP([1, 4, 1]), backend="fused", loss=lambda o, t: ((o - t) ** 4).mean())(
            b.support_x, b.support_y, b.query_x, b.query_y)


def test_custom_loss_callable_on_torch_backend():
    torch.manual_seed(0)
    model = metafast.nn.MLP([1, 6, 1]).double()
    l1 = lambda o, t: (o - t).abs().mean()
    check_against_reference(model, l1, "torch", False, False, 2, [1, 6, 1])


@pytest.mark.cuda
@pytest.mark.parametrize("first_order", [False, True])
def test_cuda_fused_matches_torch(first_order):
    torch.manual_seed(0)
    model = metafast.nn.MLP([1, 40, 40, 1]).double().cuda()
    b = metafast.data.Sinusoid().sample(25, 10, 10, device="cuda", dtype=torch.float64)
    grads = {}
    for backend in ("fused", "torch"):
        meta = BatchedMAML(model, inner_steps=5, first_order=first_order, meta_sgd=True, backend=backend)
        out = meta(b.support_x, b.support_y, b.query_x, b.query_y)
        grads[backend] = torch.autograd.grad(out.loss, list(model.parameters()) + list(meta.inner_lrs))
    assert max_rel_err(grads["fused"], grads["torch"]) < TOL


# ------------------------------------------------------------------ audit (issue 7)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tasks, queries", [(3, 3), (3, 1), (1, 3)])
def test_targets_of_the_wrong_shape_are_refused_not_broadcast(backend, tasks, queries):
    # [T, Q] or [T, Q, 2] targets broadcast against a [T, Q, 1] output when T == Q, Q == 1 or T == 1.
    torch.manual_seed(0)
    meta = BatchedMAML(metafast.nn.MLP([1, 8, 1]).double(), backend=backend)
    sx, sy, qx, qy = random_mlp_task([1, 8, 1], tasks, 4, queries, "mse")
    for bad in (qy[..., 0], qy.expand(-1, -1, 2)):
        with pytest.raises(ValueError, match=rf"query_y must have shape \({tasks}, {queries}, 1\)"):
            meta(sx, sy, qx, bad)
    with pytest.raises(ValueError, match=rf"support_y must have shape \({tasks}, 4, 1\)"):
        meta(sx, sy[..., 0], qx, qy)
    with pytest.raises(ValueError, match=r"support_y must have shape"):
        meta.adapt(sx, sy.expand(-1, -1, 2))


def test_cross_entropy_targets_and_labels_follow_the_models_output():
    # Conv-4 on the torch backend: class count and target shape come from the model's output.
    torch.manual_seed(0)
    meta = BatchedMAML(metafast.nn.Conv4(3, hidden=4).double(), loss="cross_entropy", backend="torch")
    sx, qx = torch.randn(2, 3, 1, 8, 8, dtype=torch.float64), torch.randn(2, 6, 1, 8, 8, dtype=torch.float64)
    sy, qy = torch.tensor([[0, 1, 2]] * 2), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
    meta(sx, sy, qx, qy)
    with pytest.raises(ValueError, match=r"query_y must have shape \(2, 6\)"):
        meta(sx, sy, qx, qy[..., None])
    with pytest.raises(ValueError, match=r"class labels in \[1, 3\] but the model has 3 outputs"):
        meta(sx, sy, qx, qy + 1)
    with pytest.raises(ValueError, match="support_x must be .* 1 channels"):
        meta(sx.expand(-1, -1, 2, -1, -1), sy, qx.expand(-1, -1, 2, -1, -1), qy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_feature_dimension_names_the_argument(backend):
    meta, (sx, sy, qx, qy) = _setup()
    meta.backend = backend
    with pytest.raises(ValueError, match="support_x has 3 features per example but the model's first layer"):
        meta(torch.cat([sx, sx[..., :1]], -1), sy, torch.cat([qx, qx[..., :1]], -1), qy)
    with pytest.raises(ValueError, match="x has 1 features"):
        meta.predict(meta.adapt(sx, sy), qx[..., :1])


@pytest.mark.parametrize("value, exc, match", [
    (None, TypeError, "inner_steps must be a positive integer, got None"),
    (1.5, TypeError, "got 1.5"),
    (2.0, TypeError, "got 2.0"),
    (True, TypeError, "got True"),
    (0, ValueError, "got 0"),
])
def test_inner_steps_must_be_a_positive_integer(value, exc, match):
    model = metafast.nn.MLP([2, 4, 3])
    with pytest.raises(exc, match=match):
        BatchedMAML(model, inner_steps=value)
    if value is not None:  # adapt(steps=None) means inner_steps
        meta, (sx, sy, _, _) = _setup()
        with pytest.raises(exc, match="adapt: steps must be a positive integer"):
            meta.adapt(sx, sy, steps=value)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -float("inf"), None, "0.1"])
def test_inner_lr_must_be_a_finite_number(lr):
    with pytest.raises((TypeError, ValueError), match="inner_lr must be"):
        BatchedMAML(metafast.nn.MLP([2, 4, 3]), inner_lr=lr)


def test_inner_lr_tensor_that_wants_a_gradient_is_refused():
    with pytest.raises(ValueError, match="meta_sgd=True"):
        BatchedMAML(metafast.nn.MLP([2, 4, 3]), inner_lr=torch.tensor(0.1, requires_grad=True))


def test_nan_meta_sgd_rates_are_refused():
    meta, (sx, sy, qx, qy) = _setup()
    meta = BatchedMAML(meta.model, meta_sgd=True)
    with torch.no_grad():
        meta.inner_lrs[0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="inner_lrs contains NaN or inf"):
        meta(sx, sy, qx, qy)


@requires_extension
def test_auto_falls_back_to_torch_beyond_the_fused_step_limit():
    torch.manual_seed(0)
    model = metafast.nn.MLP([1, 4, 1]).double()
    b = metafast.data.Sinusoid().sample(2, 3, 3, dtype=torch.float64)
    meta = BatchedMAML(model, inner_lr=1e-4, inner_steps=1001)
    with pytest.warns(RuntimeWarning, match="1001 inner steps"):
        out = meta(b.support_x, b.support_y, b.query_x, b.query_y)
    assert meta.backend_used == "torch" and out.support_losses.shape == (2, 1001)
    fused = BatchedMAML(model, inner_lr=1e-4)
    assert fused.adapt(b.support_x, b.support_y, steps=1000) and fused.backend_used == "fused"
    with pytest.warns(RuntimeWarning, match="1001 inner steps"):
        fused.adapt(b.support_x, b.support_y, steps=1001)
    assert fused.backend_used == "torch"
    with pytest.raises(ValueError, match="cannot serve this call: 1001 inner steps"):
        BatchedMAML(model, inner_steps=1001, backend="fused")(b.support_x, b.support_y, b.query_x, b.query_y)


def test_nan_weights_give_a_nan_loss_on_the_torch_backend():
    torch.manual_seed(0)
    model = metafast.nn.MLP([1, 8, 8, 1]).double()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    b = metafast.data.Sinusoid().sample(3, 5, 5, dtype=torch.float64)
    out = BatchedMAML(model, backend="torch")(b.support_x, b.support_y, b.query_x, b.query_y)
    assert out.loss.isnan() and out.support_losses.isnan().all()
    out.loss.backward()
    assert model[2].weight.grad.isnan().any()


def test_mlp_sizes_must_be_integers():
    for sizes in ([1.5, 8, 1], [1, 8.0, 1], [True, 8, 1]):
        with pytest.raises(TypeError, match="sizes must be integers"):
            metafast.nn.MLP(sizes)


def test_sinusoid_with_an_integer_dtype_says_so():
    with pytest.raises(TypeError, match="floating-point dtype .* got torch.int64"):
        metafast.data.Sinusoid().sample(2, dtype=torch.int64)


def test_auto_takes_compile_only_when_enough_iterations_are_expected():
    """On the CPU "auto" tries the compiled backend before vmap for a small conv net
    only when the caller expects at least CPU_COMPILE_MIN_ITERATIONS iterations;
    never for MLPs, nor for conv nets in the loop's regime, nor by default."""
    from metafast.algorithms.batched import CPU_COMPILE_MIN_ITERATIONS, auto_order

    conv = metafast.nn.Conv4(5, hidden=8)
    sx = torch.rand(2, 5, 1, 28, 28)
    many = CPU_COMPILE_MIN_ITERATIONS
    assert "compile" not in auto_order(BatchedMAML(conv, loss="cross_entropy"), sx)
    assert "compile" not in auto_order(BatchedMAML(conv, loss="cross_entropy", expected_iterations=many - 1), sx)
    order = auto_order(BatchedMAML(conv, loss="cross_entropy", expected_iterations=many), sx)
    assert order.index("compile") < order.index("torch")
    mlp = metafast.nn.MLP([1, 40, 40, 1])
    assert auto_order(BatchedMAML(mlp, expected_iterations=10 * many), torch.rand(2, 10, 1)) == ("fused", "torch",
                                                                                                "loop")
    big = torch.rand(2, 5 * 25, 1, 28, 28)  # conv outputs far above CPU_LOOP_MIN_CONV_OUTPUTS: the loop's regime
    assert auto_order(BatchedMAML(metafast.nn.Conv4(5, hidden=64), loss="cross_entropy",
                                  expected_iterations=10 * many), big)[:2] == ("fused", "loop")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "many"])
def test_expected_iterations_must_be_a_positive_int(bad):
    with pytest.raises((ValueError, TypeError), match="expected_iterations"):
        BatchedMAML(metafast.nn.MLP([1, 4, 1]), expected_iterations=bad)
