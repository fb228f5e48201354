"""MAML++ in the fused MLP op (metafast::mlp_adapt): LSLR's per-step rates
(lrs [steps, P]) and MSL's query loss after every step (query_every_step),
against the pure-PyTorch formula in float64 to 1e-10, both orders; opcheck;
errors; and BatchedMAML(backend="fused") with each component against the
plain per-task eager MAML++ loop (metafast.reference)."""
import pytest
import torch

import metafast
from metafast import BatchedMAML
from metafast.ops import mlp_adapt, mlp_adapt_torch, mlp_num_params
from metafast.reference import meta_loss
from metafast.training_schedules import msl_weights
from helpers import TOL, max_rel_err, random_mlp_task, randomize_step_lrs, requires_extension

pytestmark = pytest.mark.kernels  # CI runs these beside other torch versions too

SIZES = [3, 6, 5, 4]
STEPS = 3


def _inputs(loss, seed=0, tasks=3):
    torch.manual_seed(seed)
    p = (torch.randn(mlp_num_params(SIZES), dtype=torch.float64) * 0.5).requires_grad_()
    lrs = (torch.rand(STEPS, p.numel(), dtype=torch.float64) * 0.3 + 0.05).requires_grad_()
    sx, sy, qx, qy = random_mlp_task(SIZES, tasks, 5, 4, loss)
    return p, lrs, sx.requires_grad_(), sy, qx.requires_grad_(), qy


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("every_step", [False, True])
@pytest.mark.parametrize("step_rates", [False, True])
def test_op_equals_torch_formula(loss, first_order, every_step, step_rates):
    p, lrs, sx, sy, qx, qy = _inputs(loss)
    if not step_rates:
        lrs = lrs[0].detach().clone().requires_grad_()
    kw = dict(lr=0.2, lrs=lrs, activation="tanh", loss=loss, first_order=first_order, query_x=qx, query_y=qy,
              query_every_step=every_step)
    got = mlp_adapt(p, sx, sy, SIZES, STEPS, **kw)
    want = mlp_adapt_torch(p, lrs, 0.2, sx, sy, SIZES, STEPS, "tanh", loss, first_order, qx, qy, None, every_step,
                           step_rates=step_rates)
    assert got[3].shape == ((3, STEPS) if every_step else (3,))
    assert max_rel_err(got, want) < TOL
    # Random upstream gradients of every output, the query losses' included.
    upstream = [torch.randn_like(t) for t in want]
    wrt = [p, lrs, sx, qx]
    g_got = torch.autograd.grad(got, wrt, upstream)
    g_want = torch.autograd.grad(want, wrt, upstream)
    assert g_got[1].shape == lrs.shape
    assert max_rel_err(g_got, g_want) < TOL


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_second_derivatives_of_the_multi_step_loss(loss):
    """A gradient of the meta-gradient (the torch formula inside the op's backward)."""
    p, lrs, sx, sy, qx, qy = _inputs(loss, seed=1, tasks=2)
    outs = [f(p, lrs, sx, sy, qx, qy) for f in (
        lambda *a: mlp_adapt(a[0], a[2], a[3], SIZES, STEPS, lr=0.2, lrs=a[1], activation="tanh", loss=loss,
                             query_x=a[4], query_y=a[5], query_every_step=True)[3],
        lambda *a: mlp_adapt_torch(a[0], a[1], 0.2, a[2], a[3], SIZES, STEPS, "tanh", loss, False, a[4], a[5], None,
                                   True, step_rates=True)[3])]
    grads = [torch.autograd.grad(o.sum(), [p, lrs], create_graph=True) for o in outs]
    hv = [torch.autograd.grad(g[0].square().sum() + g[1].sum(), [p, lrs]) for g in grads]
    assert max_rel_err(hv[0], hv[1]) < TOL


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_opcheck_maml_plus_plus(loss):
    p, lrs, sx, sy, qx, qy = _inputs(loss, seed=2, tasks=2)
    args = (p, lrs, 0.1, sx, sy, qx, qy, SIZES, STEPS, "relu", loss, False, None, True)
    torch.library.opcheck(torch.ops.metafast.mlp_adapt.default, args)
    out = torch.ops.metafast.mlp_adapt(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    grads = [torch.randn_like(t) for t in out[:4]]
    for first_order in (False, True):
        torch.library.opcheck(torch.ops.metafast.mlp_adapt_backward.default,
                              (*grads, out[0], out[4], p.detach(), lrs.detach(), 0.1, sx.detach(), sy, qx.detach(),
                               qy, SIZES, "relu", loss, first_order, True, True, True, None, True))


@requires_extension
def test_bad_maml_plus_plus_arguments_are_refused():
    p, lrs, sx, sy, qx, qy = _inputs("mse")
    with pytest.raises(ValueError, match=r"lrs must have the shape of params .* or be one row per step"):
        mlp_adapt(p, sx, sy, SIZES, STEPS + 1, lrs=lrs)  # 3 rows for 4 steps
    with pytest.raises(ValueError, match="query_every_step needs a query set"):
        mlp_adapt(p, sx, sy, SIZES, STEPS, lrs=lrs, query_every_step=True)
    out = torch.ops.metafast.mlp_adapt(p.detach(), lrs.detach(), 0.1, sx.detach(), sy, qx.detach(), qy, SIZES, STEPS,
                                       "relu", "mse", False, None, True)
    with pytest.raises(ValueError, match=r"grad_query_losses must be the query losses' shape \[3, 3\]"):
        torch.ops.metafast.mlp_adapt_backward(out[0], None, None, torch.ones(3), out[0], out[4], p.detach(),
                                              lrs.detach(), 0.1, sx.detach(), sy, qx.detach(), qy, SIZES, "relu",
                                              "mse", False, False, False, False, None, True)


COMPONENTS = {"lslr": {"lslr"}, "msl": {"msl"}, "both": {"lslr", "msl"}}


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("component", list(COMPONENTS))
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_fused_maml_plus_plus_equals_the_eager_loop(loss, component, first_order):
    parts = COMPONENTS[component]
    torch.manual_seed(3)
    model = metafast.nn.MLP(SIZES, "relu").double()
    sx, sy, qx, qy = random_mlp_task(SIZES, 4, 5, 6, loss)
    meta = BatchedMAML(model, inner_lr=0.2, inner_steps=STEPS, first_order=first_order, loss=loss, backend="fused",
                       per_step_rates="lslr" in parts)
    randomize_step_lrs(meta, 0.05, 0.4)
    step_weights = msl_weights(STEPS, epoch=2, anneal_epochs=10) if "msl" in parts else None
    params = list(model.parameters()) + (list(meta.step_lrs) if meta.step_lrs is not None else [])
    out = meta(sx, sy, qx, qy, step_weights=step_weights)
    assert meta.backend_used == "fused"
    got = torch.autograd.grad(out.loss, params)
    step_lrs = None if meta.step_lrs is None else dict(zip(meta.adapt_names, meta.step_lrs))
    ref = meta_loss(model, sx, sy, qx, qy, 0.2, STEPS, first_order, loss, adapt_names=meta.adapt_names,
                    step_lrs=step_lrs, step_weights=step_weights)
    want = torch.autograd.grad(ref, params)
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    assert max_rel_err(got, want) < TOL
