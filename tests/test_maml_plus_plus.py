"""MAML++ (Antoniou et al., 2019) on BatchedMAML: each component alone and all
together (LSLR per-step rates, MSL multi-step loss, BNWB per-step batch norm,
BNRS per-step running statistics), first and second order, on every backend
that serves it, against the plain eager MAML++ loop (metafast.reference) in
float64 to 1e-10."""
import warnings

import pytest
import torch

import metafast
from metafast import BatchedMAML
from metafast.algorithms.backends.compiled import CompileWarning
from metafast.reference import meta_loss
from metafast.training_schedules import msl_weights
from helpers import max_rel_err, randomize_step_lrs

TOL = 1e-10
STEPS = 3
COMPONENTS = {"lslr": {"lslr"}, "msl": {"msl"}, "bnwb": {"bnwb"}, "all": {"lslr", "msl", "bnwb"}}


def _problem(bnwb, seed=0):
    torch.manual_seed(seed)
    model = metafast.nn.Conv4(3, hidden=4, per_step_bn=STEPS if bnwb else None).double()
    sx, qx = torch.randn(2, 3, 1, 12, 12, dtype=torch.float64), torch.randn(2, 4, 1, 12, 12, dtype=torch.float64)
    return model, (sx, torch.randint(0, 3, (2, 3)), qx, torch.randint(0, 3, (2, 4)))


def _weights_not_norms(model):
    """MAML++ adapts the weights, not the batch-norm parameters (the released configs)."""
    return [n for n, _ in model.named_parameters() if ".1." not in n]  # blocks: conv (0), norm (1), ReLU (2)


@pytest.mark.parametrize("backend", ["torch", "loop", "compile"])
@pytest.mark.parametrize("component", list(COMPONENTS))
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_plus_plus_equals_the_eager_loop(monkeypatch, backend, component, first_order):
    if backend == "compile":
        if component not in ("all",):
            pytest.skip("the compiled backend: all components together (compile time)")
        monkeypatch.setenv("METAFAST_COMPILE_BACKEND", "aot_eager")
    parts = COMPONENTS[component]
    model, data = _problem("bnwb" in parts)
    adapt = _weights_not_norms(model) if "bnwb" in parts else "all"
    meta = BatchedMAML(model, inner_lr=0.3, inner_steps=STEPS, first_order=first_order, loss="cross_entropy",
                       backend=backend, adapt=adapt, per_step_rates="lslr" in parts)
    randomize_step_lrs(meta, 0.1, 0.5)
    step_weights = msl_weights(STEPS, epoch=1, anneal_epochs=10) if "msl" in parts else None
    params = list(model.parameters()) + (list(meta.step_lrs) if meta.step_lrs is not None else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileWarning)
        out = meta(*data, step_weights=step_weights)
    got = torch.autograd.grad(out.loss, params)
    step_lrs = None if meta.step_lrs is None else dict(zip(meta.adapt_names, meta.step_lrs))
    ref = meta_loss(model, *data, 0.3, STEPS, first_order, "cross_entropy", adapt_names=meta.adapt_names,
                    step_lrs=step_lrs, step_weights=step_weights)
    want = torch.autograd.grad(ref, params)
    assert meta.backend_used == backend
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    assert max_rel_err(got, want) < TOL


@pytest.mark.parametrize("first_order", [False, True])
def test_per_step_running_statistics(first_order):
    torch.manual_seed(0)
    model = metafast.nn.Conv4(3, hidden=4, per_step_bn=STEPS, per_step_running_stats=True).double()
    _, data = _problem(True)
    meta = BatchedMAML(model, inner_lr=0.3, inner_steps=STEPS, first_order=first_order, loss="cross_entropy")
    norm = model.features[0][1]
    before = norm.running_mean.clone()
    out = meta(*data)
    assert meta.backend_used == "loop"  # running statistics updated in place: the per-task loop
    assert not torch.equal(norm.running_mean[0], before[0]) and not torch.equal(norm.running_mean[2], before[2])
    model.eval()  # evaluation uses each step's own statistics: exact on the vmap backend too
    for backend in ("torch", "loop"):
        meta = BatchedMAML(model, inner_lr=0.3, inner_steps=STEPS, first_order=first_order, loss="cross_entropy",
                           backend=backend)
        got = meta(*data).loss
        ref = meta_loss(model, *data, 0.3, STEPS, first_order, "cross_entropy")
        assert abs(got.item() - ref.item()) <= TOL * abs(ref.item())
    assert out.loss.requires_grad


def test_msl_schedule_anneals_to_the_last_step():
    first = msl_weights(5, epoch=0, anneal_epochs=10)
    assert torch.allclose(first, torch.full((5,), 0.2, dtype=torch.float64))
    mid = msl_weights(5, epoch=5, anneal_epochs=10)
    assert mid[-1] > 0.2 and (mid[:-1] < 0.2).all() and abs(mid.sum().item() - 1) < 1e-12
    late = msl_weights(5, epoch=10, anneal_epochs=10)
    assert late[-1].item() == pytest.approx(1 - 4 * 0.03 / 5) and (late[:-1] == 0.03 / 5).all()


def test_bad_maml_plus_plus_options_are_refused():
    model, data = _problem(True)
    with pytest.raises(ValueError, match="choose one"):
        BatchedMAML(model, meta_sgd=True, per_step_rates=True)
    meta = BatchedMAML(model, inner_steps=STEPS, loss="cross_entropy", per_step_rates=True)
    with pytest.raises(ValueError, match="one weight per inner step"):
        meta(*data, step_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="finite and non-negative"):
        meta(*data, step_weights=[0.5, float("nan"), 0.5])
    plain, _ = _problem(False)
    with pytest.raises(ValueError, match="has no rate"):
        BatchedMAML(plain, inner_steps=STEPS, loss="cross_entropy", per_step_rates=True).adapt(data[0], data[1],
                                                                                               steps=STEPS + 1)
    with pytest.raises(ValueError, match="parameters the model does not have"):
        BatchedMAML(model, adapt=["nope.weight"])
    small = metafast.nn.Conv4(3, hidden=4, per_step_bn=2).double()
    with pytest.raises(ValueError, match="inner step 2 but the layer has 2 steps"):
        BatchedMAML(small, inner_steps=3, loss="cross_entropy", backend="loop")(*data)
