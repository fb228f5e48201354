"""metafast::mlp_meta_grad (one meta-iteration in one call: mlp_adapt's
forward and the meta-loss's gradient) against the pure-PyTorch formula in
float64 to 1e-10, both orders, MAML / Meta-SGD / MAML++ rates, the multi-step
loss and support weights; opcheck; errors; and BatchedMAML's fused backend,
which runs it: the precomputed gradient, the gradients of its other outputs
and of the gradient itself, against the eager reference."""
import importlib

import pytest
import torch

import metafast
from metafast import BatchedMAML
from metafast.ops import mlp_adapt_torch, mlp_meta_grad, mlp_num_params
from metafast.reference import meta_loss
from helpers import TOL, max_rel_err, random_mlp_task, randomize_step_lrs, requires_extension

pytestmark = pytest.mark.kernels  # CI runs these beside other torch versions too

SIZES = [3, 6, 5, 4]
STEPS = 3
TASKS = 4
RATES = ["scalar", "per-parameter", "per-step"]


def sample_inputs(loss="mse", rates="scalar", every_step=False, weighted=False, first_order=False, seed=0):
    """(args, kwargs) of mlp_meta_grad: a meta-batch in float64 with random
    upstream weights of the query losses (not only the mean's 1/T)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(mlp_num_params(SIZES), dtype=torch.float64, generator=g) * 0.5
    lrs = {"scalar": None,
           "per-parameter": torch.rand(p.numel(), dtype=torch.float64, generator=g) * 0.3 + 0.05,
           "per-step": torch.rand(STEPS, p.numel(), dtype=torch.float64, generator=g) * 0.3 + 0.05}[rates]
    sx, sy, qx, qy = random_mlp_task(SIZES, TASKS, 5, 4, loss, generator=g)
    shape = (TASKS, STEPS) if every_step else (TASKS,)
    kwargs = dict(steps=STEPS, lr=0.2, lrs=lrs, activation="tanh", loss=loss, first_order=first_order,
                  grad_query_losses=torch.rand(shape, dtype=torch.float64, generator=g),
                  lrs_grad=lrs is not None, query_every_step=every_step,
                  support_weights=torch.rand(TASKS, 5, dtype=torch.float64, generator=g) if weighted else None)
    return (p, sx, sy, qx, qy, SIZES), kwargs


def reference(p, sx, sy, qx, qy, sizes, steps, lr, lrs, activation, loss, first_order, grad_query_losses, lrs_grad,
              query_every_step, support_weights):
    """The torch formula's outputs and autograd's gradient of Σ w·query_losses."""
    p = p.detach().requires_grad_()
    lrs = None if lrs is None else lrs.detach().requires_grad_(lrs_grad)
    _, support_losses, query_output, query_losses = mlp_adapt_torch(
        p, lrs, lr, sx, sy, sizes, steps, activation, loss, first_order, qx, qy, support_weights, query_every_step,
        step_rates=lrs is not None and lrs.dim() == 2)
    wrt = [p] + ([lrs] if lrs_grad else [])
    grads = torch.autograd.grad((query_losses * grad_query_losses).sum(), wrt)
    return support_losses, query_output, query_losses, grads[0], grads[1] if lrs_grad else None


CASES = [dict(loss=loss, rates=rates, every_step=every, weighted=weighted, first_order=fo)
         for loss in ("mse", "cross_entropy") for rates in RATES for every in (False, True)
         for weighted, fo in ((False, False), (True, False), (False, True))]


@requires_extension
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_matches_the_torch_formula_float64(case):
    args, kwargs = sample_inputs(**case)
    got = mlp_meta_grad(*args, **kwargs)
    want = reference(*args, **kwargs)
    assert [None if t is None else t.shape for t in got] == [None if t is None else t.shape for t in want]
    assert max_rel_err([t for t in got if t is not None], [t for t in want if t is not None]) < TOL


@requires_extension
@pytest.mark.parametrize("rates", RATES)
def test_equals_the_two_op_path(rates):
    """Bit for bit what autograd gets through mlp_adapt and mlp_adapt_backward."""
    args, kwargs = sample_inputs(rates=rates, seed=3)
    got = mlp_meta_grad(*args, **kwargs)
    p, sx, sy, qx, qy, sizes = args
    p = p.clone().requires_grad_()
    lrs = None if kwargs["lrs"] is None else kwargs["lrs"].clone().requires_grad_()
    outs = metafast.ops.mlp_adapt(p, sx, sy, sizes, STEPS, lr=0.2, lrs=lrs, activation="tanh", query_x=qx,
                                  query_y=qy)
    (outs[3] * kwargs["grad_query_losses"]).sum().backward()
    assert torch.equal(got[3], p.grad)
    assert lrs is None or torch.equal(got[4], lrs.grad)
    assert all(torch.equal(a, b) for a, b in zip(got[:3], outs[1:]))


@requires_extension
def test_the_torch_fallback_matches_the_kernel(monkeypatch):
    args, kwargs = sample_inputs(loss="cross_entropy", rates="per-step", every_step=True, weighted=True, seed=5)
    kernel = mlp_meta_grad(*args, **kwargs)
    monkeypatch.setattr(importlib.import_module("metafast.ops.mlp_adapt"), "kernel_available", lambda device: False)
    fallback = mlp_meta_grad(*args, **kwargs)
    assert max_rel_err(kernel, fallback) < TOL


@requires_extension
@pytest.mark.parametrize("case", [dict(), dict(loss="cross_entropy", rates="per-step", every_step=True),
                                  dict(rates="per-parameter", weighted=True, first_order=True)],
                         ids=["maml", "maml-pp", "meta-sgd"])
def test_opcheck(case):
    args, kwargs = sample_inputs(**case)
    p, sx, sy, qx, qy, sizes = args
    op_args = (p, kwargs["lrs"], kwargs["lr"], sx, sy, qx, qy, sizes, STEPS, kwargs["activation"], kwargs["loss"],
               kwargs["first_order"], kwargs["grad_query_losses"], kwargs["lrs_grad"], kwargs["support_weights"],
               kwargs["query_every_step"])
    torch.library.opcheck(torch.ops.metafast.mlp_meta_grad.default, op_args)


@requires_extension
@pytest.mark.parametrize("change, match", [
    (dict(grad_query_losses=torch.ones(TASKS + 1, dtype=torch.float64)), "grad_query_losses must have the query"),
    (dict(grad_query_losses=torch.ones(TASKS, dtype=torch.float32)), "grad_query_losses must have params' dtype"),
    (dict(query_every_step=True), "grad_query_losses must have the query"),
    (dict(lrs_grad=True), "lrs_grad needs lrs"),
])
def test_bad_input_names_the_problem(change, match, monkeypatch):
    args, kwargs = sample_inputs()
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        mlp_meta_grad(*args, **kwargs)
    with monkeypatch.context() as patch:  # the pure-PyTorch fallback's checks
        patch.setattr(importlib.import_module("metafast.ops.mlp_adapt"), "kernel_available", lambda device: False)
        with pytest.raises(ValueError, match=match):
            mlp_meta_grad(*args, **kwargs)
    p, sx, sy, qx, qy, sizes = args
    with pytest.raises(ValueError, match=match):  # the C++ checks themselves
        torch.ops.metafast.mlp_meta_grad(p, kwargs["lrs"], 0.2, sx, sy, qx, qy, sizes, STEPS, "tanh", "mse", False,
                                         kwargs["grad_query_losses"], kwargs["lrs_grad"], None,
                                         kwargs["query_every_step"])


# --- BatchedMAML(backend="fused") runs it -----------------------------------------------------

def _meta_and_task(per_step_rates=False, meta_sgd=False, loss="mse", seed=0):
    torch.manual_seed(seed)
    model = metafast.nn.MLP(SIZES, activation="tanh").double()
    meta = BatchedMAML(model, inner_lr=0.2, inner_steps=STEPS, backend="fused", meta_sgd=meta_sgd,
                       per_step_rates=per_step_rates, loss=loss)
    if per_step_rates:
        randomize_step_lrs(meta, 0.05, 0.35)
    return model, meta, random_mlp_task(SIZES, TASKS, 5, 4, loss)


def _reference_loss(model, meta, task, step_weights=None):
    """The plain per-task eager loop (metafast.reference) with meta's rates."""
    step_lrs = None if meta.step_lrs is None else dict(zip(meta.adapt_names, meta.step_lrs))
    lrs = None if meta.inner_lrs is None else list(meta.inner_lrs)
    return meta_loss(model, *task, 0.2, STEPS, False, meta.loss_name, lrs=lrs, adapt_names=meta.adapt_names,
                     step_lrs=step_lrs, step_weights=step_weights)


@requires_extension
def test_batched_maml_runs_one_meta_grad_call(monkeypatch):
    fused = importlib.import_module("metafast.algorithms.backends.fused")
    calls = []
    monkeypatch.setattr(fused, "mlp_meta_grad", lambda *a, **k: calls.append(1) or mlp_meta_grad(*a, **k))
    model, meta, task = _meta_and_task()
    meta(*task).loss.backward()
    assert calls == [1] and meta.backend_used == "fused"
    with torch.no_grad():
        meta(*task)
    assert calls == [1]  # evaluation needs no gradient: the plain forward op


@requires_extension
@pytest.mark.parametrize("extra", ["support_losses", "query_output", "both"])
def test_gradients_of_the_other_outputs_are_exact(extra):
    """The precomputed gradient covers the meta-loss only; a gradient of the
    support losses or the query output re-runs the differentiable op."""
    model, meta, task = _meta_and_task(meta_sgd=True, seed=1)
    def objective(out):
        total = out.loss
        if extra in ("support_losses", "both"):
            total = total + 0.3 * out.support_losses.sum()
        if extra in ("query_output", "both"):
            total = total + 0.1 * out.query_output.pow(2).sum()
        return total

    wrt = list(model.parameters()) + list(meta.inner_lrs)
    got = torch.autograd.grad(objective(meta(*task)), wrt)
    meta.backend = "torch"  # the same model and rates on the batched-autograd path
    want = torch.autograd.grad(objective(meta(*task)), wrt)
    assert meta.backend_used == "torch"
    assert max_rel_err(got, want) < TOL


@requires_extension
@pytest.mark.parametrize("per_step_rates, every_step", [(False, False), (True, False), (True, True)])
def test_meta_gradient_and_its_gradient_match_the_reference(per_step_rates, every_step):
    model, meta, task = _meta_and_task(per_step_rates=per_step_rates, loss="cross_entropy", seed=2)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64) if every_step else None
    params = list(model.parameters()) + list(meta.step_lrs or [])
    ref_loss = _reference_loss(model, meta, task, w)
    # The precomputed gradient (a plain backward)...
    out = meta(*task, step_weights=w)
    assert abs(out.loss.item() - ref_loss.item()) <= TOL * abs(ref_loss.item())
    want = torch.autograd.grad(ref_loss, params, retain_graph=True)
    assert max_rel_err(torch.autograd.grad(out.loss, params), want) < TOL
    # ...and with create_graph=True, through the differentiable op.
    got = torch.autograd.grad(meta(*task, step_weights=w).loss, params, create_graph=True)
    ref = torch.autograd.grad(ref_loss, params, create_graph=True)
    assert max_rel_err(got, ref) < TOL
    # A gradient of the meta-gradient (create_graph=True) re-runs the differentiable op.
    probe = [torch.randn_like(p) for p in params]
    got2 = torch.autograd.grad(sum((g * v).sum() for g, v in zip(got, probe)), params)
    ref2 = torch.autograd.grad(sum((g * v).sum() for g, v in zip(ref, probe)), params)
    assert max_rel_err(got2, ref2) < TOL


@requires_extension
@pytest.mark.cuda
@pytest.mark.parametrize("case", [dict(), dict(loss="cross_entropy", rates="per-step", every_step=True),
                                  dict(rates="per-parameter", weighted=True, first_order=True)],
                         ids=["maml", "maml-pp", "meta-sgd"])
def test_cuda_matches_the_cpu_kernel(case):
    """The GPU's one launch per meta-iteration (a thread block per task) against the CPU's packs."""
    args, kwargs = sample_inputs(**case)
    cpu = mlp_meta_grad(*args, **kwargs)
    to_cuda = lambda t: t.cuda() if isinstance(t, torch.Tensor) else t  # noqa: E731
    cuda = mlp_meta_grad(*[to_cuda(a) for a in args], **{k: to_cuda(v) for k, v in kwargs.items()})
    for got, want in zip(cuda, cpu):
        if want is not None:
            scale = want.abs().max().clamp_min(1.0)
            assert (got.cpu() - want).abs().max() <= TOL * scale
