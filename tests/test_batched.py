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
from conftest import max_rel_err, random_mlp_task, requires_extension

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
