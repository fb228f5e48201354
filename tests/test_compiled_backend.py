"""BatchedMAML(backend="compile"): torch.compile over the torch.func
meta-gradient, exact against the eager reference in float64 (MLP and Conv-4
with batch norm; MAML and Meta-SGD; first and second order), compiled once.

The exactness matrix traces with the "aot_eager" compiler (Dynamo and AOT
autograd, no code generation: seconds per case instead of a minute); one case
runs Inductor end to end."""
import warnings

import pytest
import torch
from torch import nn

import metafast
from metafast import BatchedMAML
from metafast.algorithms.backends.compiled import CompileWarning
from metafast.reference import meta_loss
from helpers import max_rel_err, random_mlp_task

TOL = 1e-10


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(3, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        return x + self.b(torch.tanh(self.norm(self.a(x))))


def _problem(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        return ResidualMLP().double(), "mse", random_mlp_task([3, 3], 3, 4, 3, "mse")
    model = metafast.nn.Conv4(3, hidden=4).double()
    sx, qx = torch.randn(3, 3, 1, 12, 12, dtype=torch.float64), torch.randn(3, 4, 1, 12, 12, dtype=torch.float64)
    return model, "cross_entropy", (sx, torch.randint(0, 3, (3, 3)), qx, torch.randint(0, 3, (3, 4)))


def _check(model, loss, data, first_order=False, meta_sgd=False, steps=2, adapt="all", weights=None):
    meta = BatchedMAML(model, inner_lr=0.3, inner_steps=steps, first_order=first_order, meta_sgd=meta_sgd,
                       loss=loss, backend="compile", adapt=adapt)
    if meta_sgd:
        with torch.no_grad():
            for r in meta.inner_lrs:
                r.uniform_(0.1, 0.5)
    params = list(model.parameters()) + (list(meta.inner_lrs) if meta_sgd else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileWarning)
        out = meta(*data, support_weights=weights)
    got = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref = meta_loss(model, *data, 0.3, steps, first_order, loss, lrs=list(meta.inner_lrs) if meta_sgd else None,
                    adapt_names=meta.adapt_names, support_weights=weights)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    assert meta.backend_used == "compile"
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    pairs = [(g, w) for g, w in zip(got, want) if w is not None]
    assert max_rel_err([g for g, _ in pairs], [w for _, w in pairs]) < TOL
    return meta, out


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv("METAFAST_COMPILE_BACKEND", "aot_eager")


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_compiled_meta_gradient_equals_reference(aot_eager, kind, first_order, meta_sgd):
    model, loss, data = _problem(kind)
    _check(model, loss, data, first_order, meta_sgd)


def test_compiled_anil_and_support_weights(aot_eager):
    model, loss, data = _problem("conv4")
    _check(model, loss, data, adapt="head")
    weights = torch.rand(3, 3, dtype=torch.float64)
    _check(model, loss, data, weights=weights)


def test_compiled_evaluation_under_no_grad(aot_eager):
    model, loss, data = _problem("conv4")
    meta = BatchedMAML(model, inner_lr=0.3, inner_steps=2, loss=loss, backend="compile")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileWarning)
        out = meta(*data)
    ref = meta_loss(model, *data, 0.3, 2, False, loss)
    assert out.loss.grad_fn is None and abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    assert out.accuracy is not None and out.query_output.shape == (3, 4, 3)


def test_a_compiler_failure_falls_back_with_the_reason(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model, loss, data = _problem("mlp")
    meta = BatchedMAML(model, inner_lr=0.3, loss=loss, backend="compile")
    with pytest.warns(CompileWarning, match="torch.compile failed.*no compiler here"):
        out = meta(*data)
    assert meta.backend_used == "torch"
    ref = meta_loss(model, *data, 0.3, 1, False, loss)
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    with pytest.raises(ValueError, match="torch.compile failed earlier"):
        meta(*data)


def test_inductor_compiles_once_and_is_exact():
    import torch._dynamo.utils as dynamo_utils
    torch.manual_seed(0)
    model = ResidualMLP().double()
    data = random_mlp_task([3, 3], 4, 5, 5, "mse")
    meta, _ = _check(model, "mse", data)
    assert meta.compile_seconds > 0
    frames = dict(dynamo_utils.counters["frames"])
    for seed in range(3):  # new data, same shapes: no recompilation
        torch.manual_seed(seed)
        meta(*random_mlp_task([3, 3], 4, 5, 5, "mse")).loss.backward()
    assert dict(dynamo_utils.counters["frames"]) == frames
