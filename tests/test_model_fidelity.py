"""BatchedMAML computes the model the user wrote: its own forward, hooks,
parametrizations, frozen, tied, shared and unused parameters, dropout and
batch norm. Each case against the per-task eager reference in float64
(issue 15: every one of these was silently wrong or crashed before)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import metafast
from metafast import BatchedMAML
from metafast.reference import meta_loss
from helpers import max_rel_err, random_mlp_task, requires_extension

TOL = 1e-10


@pytest.fixture(autouse=True)
def float64_models():
    """Models built in float64 in this module only."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _compare(model, backend="auto", adapt="all", head=None, first_order=False, steps=2, loss="mse", sizes=(3, 1),
             expect_backend=None, **kwargs):
    """BatchedMAML's meta-loss and meta-gradient against the eager reference."""
    meta = BatchedMAML(model, inner_lr=0.1, inner_steps=steps, first_order=first_order, loss=loss,
                       backend=backend, adapt=adapt, head=head, **kwargs)
    torch.manual_seed(1)
    sx, sy, qx, qy = random_mlp_task(list(sizes), 3, 4, 3, loss)
    params = [p for p in model.parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = meta(sx, sy, qx, qy)
    got = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref = meta_loss(model, sx, sy, qx, qy, 0.1, steps, first_order, loss, adapt_names=meta.adapt_names)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    pairs = [(g, w) for g, w in zip(got, want) if w is not None]
    assert all(g is not None for g, _ in pairs)
    assert max_rel_err([g for g, _ in pairs], [w for _, w in pairs]) < TOL
    if expect_backend is not None:
        assert meta.backend_used == expect_backend
    return meta, out


class ResidualMLP(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))

    def forward(self, x):
        return x + super().forward(x)


@pytest.mark.parametrize("first_order", [False, True])
def test_a_sequential_subclass_with_its_own_forward_is_not_fused(first_order):
    meta, _ = _compare(ResidualMLP(), first_order=first_order, sizes=(3, 3))
    assert meta.backend_used != "fused"


@requires_extension
@pytest.mark.parametrize("first_order", [False, True])
def test_a_forward_hook_is_run(first_order):
    torch.manual_seed(0)
    model = metafast.nn.MLP([3, 5, 1], "tanh")
    model[0].register_forward_hook(lambda m, i, o: 2 * o)
    meta, _ = _compare(model, first_order=first_order)
    assert meta.backend_used != "fused"
    with pytest.raises(ValueError, match="forward hook"):
        BatchedMAML(model, backend="fused")(*random_mlp_task([3, 1], 2, 3, 3, "mse"))


class Scaled(nn.Module):
    def forward(self, w):
        return 0.5 * w


@pytest.mark.parametrize("first_order", [False, True])
def test_a_parametrized_weight_is_used(first_order):
    torch.manual_seed(0)
    model = metafast.nn.MLP([3, 5, 1], "relu")
    parametrize.register_parametrization(model[2], "weight", Scaled())
    meta, _ = _compare(model, first_order=first_order)
    assert meta.backend_used != "fused"


class ScaledLogits(nn.Sequential):
    def forward(self, x):
        return 3.0 * super().forward(x)


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_runs_the_models_forward(first_order):
    torch.manual_seed(0)
    model = ScaledLogits(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    meta, _ = _compare(model, adapt="head", head="2", first_order=first_order, loss="cross_entropy", sizes=(3, 2))
    assert meta.adapt_names == ["2.weight", "2.bias"] and meta.backend_used != "fused"


class OutFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 1)   # registered first, applied last
        self.inp = nn.Linear(3, 4)

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)))


def test_anil_head_is_never_guessed_from_registration_order():
    with pytest.raises(ValueError, match="cannot tell which layer.*head='out'"):
        BatchedMAML(OutFirst(), adapt="head")
    with pytest.raises(ValueError, match="not a submodule"):
        BatchedMAML(OutFirst(), adapt="head", head="outt")
    meta, _ = _compare(OutFirst(), adapt="head", head="out")
    assert meta.adapt_names == ["out.weight", "out.bias"]


@pytest.mark.parametrize("backend", ["auto", "torch", "loop", pytest.param("fused", marks=requires_extension)])
def test_frozen_parameters_stay_frozen(backend):
    torch.manual_seed(0)
    model = metafast.nn.MLP([3, 5, 1], "tanh")
    model[0].weight.requires_grad_(False)
    if backend == "fused":
        with pytest.raises(ValueError, match="frozen"):
            BatchedMAML(model, backend="fused")(*random_mlp_task([3, 1], 2, 3, 3, "mse"))
        return
    meta, out = _compare(model, backend=backend)
    assert "0.weight" not in meta.adapt_names
    # learn2learn semantics: metafast.MAML(allow_nograd=True) gives the same meta-loss
    torch.manual_seed(1)
    sx, sy, qx, qy = random_mlp_task([3, 1], 3, 4, 3, "mse")
    maml = metafast.MAML(model, lr=0.1, allow_nograd=True)
    total = 0.0
    for t in range(3):
        learner = maml.clone()
        for _ in range(2):
            learner.adapt(F.mse_loss(learner(sx[t]), sy[t]))
        total = total + F.mse_loss(learner(qx[t]), qy[t])
    assert abs(out.loss.item() - total.item() / 3) <= TOL * abs(out.loss.item())


def _tied_sequential():
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)
    return nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(3, 1)), shared


@pytest.mark.parametrize("first_order", [False, True])
def test_a_module_used_twice_is_served_exactly_and_never_destroyed(first_order):
    model, shared = _tied_sequential()
    weight = shared.weight
    meta, _ = _compare(model, first_order=first_order, expect_backend="loop")
    assert shared.weight is weight and isinstance(shared.weight, nn.Parameter) and weight.device.type == "cpu"
    sx, sy, qx, qy = random_mlp_task([3, 1], 2, 3, 3, "mse")
    for backend in ("torch", "fused"):
        with pytest.raises(ValueError, match="two names|ties parameters|not a plain"):
            BatchedMAML(model, backend=backend)(sx, sy, qx, qy)
        assert shared.weight is weight and weight.device.type == "cpu"


def test_tied_parameters_on_the_torch_backend():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    model[2].weight = model[0].weight
    meta, _ = _compare(model, backend="auto")
    assert meta.backend_used == "torch"
    _compare(model, backend="loop")


@requires_extension
def test_a_learnable_scalar_rate_is_differentiated_by_mlp_adapt():
    torch.manual_seed(0)
    sizes = [3, 4, 2]
    params = torch.randn(metafast.ops.mlp_num_params(sizes), requires_grad=True)
    sx, sy, qx, qy = random_mlp_task(sizes, 3, 5, 4, "mse")
    for first_order in (False, True):
        grads = []
        for fn in (metafast.ops.mlp_adapt, metafast.ops.mlp_adapt_torch):
            lr = torch.tensor(0.05, requires_grad=True)
            if fn is metafast.ops.mlp_adapt:
                out = fn(params, sx, sy, sizes, 2, lr=lr, first_order=first_order, query_x=qx, query_y=qy)
            else:
                out = fn(params, None, lr, sx, sy, sizes, 2, "relu", "mse", first_order, qx, qy)
            grads.append(torch.autograd.grad(out[3].mean(), [params, lr]))
        assert grads[0][1] is not None and max_rel_err(grads[0], grads[1]) < TOL


def test_mlp_forward_refuses_an_unknown_activation():
    theta = torch.zeros(2, metafast.ops.mlp_num_params([3, 2]))
    with pytest.raises(ValueError, match="unsupported activation 'gelu'"):
        metafast.ops.mlp_forward(theta, torch.zeros(2, 4, 3), [3, 2], activation="gelu")


def test_predict_refuses_unknown_or_missing_parameters():
    meta = BatchedMAML(metafast.nn.MLP([3, 4, 1]), backend="torch")
    sx, sy, qx, _ = random_mlp_task([3, 1], 2, 3, 3, "mse")
    params = meta.adapt(sx, sy)
    with pytest.raises(ValueError, match="'0.wieght' is not a parameter"):
        meta.predict({**params, "0.wieght": params.pop("0.weight")}, qx)
    with pytest.raises(ValueError, match="non-empty dict"):
        meta.predict({}, qx)
    with pytest.raises(ValueError, match=r"params\['0.bias'\] must be \[tasks, 4\]"):
        meta.predict({"0.bias": torch.zeros(2, 5)}, qx)


class WithAuxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.aux = nn.Linear(3, 1), nn.Linear(3, 7)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("backend", ["torch", "loop"])
def test_unused_parameters(backend):
    torch.manual_seed(0)
    sx, sy, qx, qy = random_mlp_task([3, 1], 2, 3, 3, "mse")
    with pytest.raises(ValueError, match="does not use aux.weight.*allow_unused=True"):
        BatchedMAML(WithAuxHead(), backend=backend)(sx, sy, qx, qy)
    meta, _ = _compare(WithAuxHead(), backend=backend, allow_unused=True)


class DropoutNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))


@pytest.mark.parametrize("backend", ["auto", "torch", "loop"])
def test_dropout_in_training_mode_draws_per_task_masks(backend):
    torch.manual_seed(0)
    model = DropoutNet()
    meta = BatchedMAML(model, inner_lr=0.1, backend=backend)
    x = torch.randn(1, 6, 3).expand(4, 6, 3).contiguous()   # four identical tasks
    y = torch.randn(1, 6, 1).expand(4, 6, 1).contiguous()
    out = meta(x, y, x, y)
    out.loss.backward()
    assert not torch.allclose(out.query_output[0], out.query_output[1])  # different masks per task
    model.eval()  # no dropout: exact
    _compare(model, backend=backend)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Linear(6, 1)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x))))


@pytest.mark.parametrize("first_order", [False, True])
def test_batch_norm_with_running_statistics(first_order):
    torch.manual_seed(0)
    model = BNNet()
    before = model.bn.running_mean.clone()
    _compare(model, first_order=first_order, expect_backend="loop")
    assert not torch.equal(model.bn.running_mean, before)  # updated task after task, as learn2learn does
    with pytest.raises(ValueError, match="running statistics.*backend='loop'"):
        BatchedMAML(model, backend="torch")(*random_mlp_task([3, 1], 2, 3, 3, "mse"))
    model.eval()
    _compare(model, backend="torch")


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(x), x


@pytest.mark.parametrize("backend", ["torch", "loop"])
def test_a_tuple_output_gets_a_clear_error(backend):
    with pytest.raises(TypeError, match="returned a tuple.*loss callable"):
        BatchedMAML(TupleOut(), backend=backend)(*random_mlp_task([3, 1], 2, 3, 3, "mse"))


def test_meta_sgd_errors_do_not_suggest_flags_it_lacks():
    model = WithAuxHead()
    learner = metafast.MetaSGD(model, lr=0.1).clone()
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError) as info:
        learner.adapt(learner(x).pow(2).mean())
    assert "MetaSGD" in str(info.value) and "pass allow_nograd" not in str(info.value)


@requires_extension
def test_no_grad_adaptation_does_not_keep_the_trajectory(monkeypatch):
    from metafast.algorithms.backends import fused
    torch.manual_seed(0)
    model = metafast.nn.MLP([3, 8, 1])
    meta = BatchedMAML(model, inner_lr=0.05, inner_steps=40, backend="fused")
    sx, sy, qx, qy = random_mlp_task([3, 1], 10, 5, 3, "mse")
    with torch.no_grad():
        whole = meta.adapt(sx, sy)
    calls = []
    real = fused.mlp_adapt
    monkeypatch.setattr(fused, "mlp_adapt", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    monkeypatch.setattr(fused, "NO_GRAD_TRAJECTORY_BYTES", 3 * 40 * sum(p.numel() for p in model.parameters()) * 8)
    with torch.no_grad():
        chunked = meta.adapt(sx, sy)
        out = meta(sx, sy, qx, qy)
    assert calls == [3, 3, 3, 1, 3, 3, 3, 1]   # tasks in chunks of 3: at most 3 trajectories alive
    assert all(torch.equal(whole[n], chunked[n]) for n in whole)
    assert out.loss.grad_fn is None and out.query_output.shape == (10, 3, 1)


class _OnCuda:
    """Stands in for a CUDA tensor in the rules that only ask where a tensor lives."""
    is_cuda = True
    device = torch.device("cuda")

    def __init__(self, shape):
        self.shape = torch.Size(shape)


def test_cuda_values_are_read_back_on_the_first_call_only(monkeypatch):
    from metafast.algorithms import batched_checks
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    meta = BatchedMAML(metafast.nn.MLP([3, 1]))
    x = _OnCuda((2, 3, 3))
    assert [batched_checks.read_values(meta, x) for _ in range(3)] == [True, False, False]  # one sync, not one per call
    meta.check_inputs = True
    assert batched_checks.read_values(meta, x)
    meta.check_inputs = False
    assert not batched_checks.read_values(meta, x) and not batched_checks.read_values(meta, torch.zeros(2, 3, 3))
    meta.check_inputs = None
    assert batched_checks.read_values(meta, torch.zeros(2, 3, 3))  # the CPU: free, every call


def test_auto_applies_a_size_rule_on_cuda_too():
    from metafast.algorithms.backends.fused import CUDA_FUSED_MAX_WORK, FusedBackend
    fused = FusedBackend()
    sinusoid = BatchedMAML(metafast.nn.MLP([1, 40, 40, 1]))
    assert fused.slower_reason(sinusoid, _OnCuda((25, 10, 1))) is None
    omniglot_mlp = BatchedMAML(metafast.nn.MLP([784, 256, 128, 64, 64, 5]), loss="cross_entropy")
    reason = fused.slower_reason(omniglot_mlp, _OnCuda((32, 5, 784)))
    assert reason is not None and f"{CUDA_FUSED_MAX_WORK:,}" in reason
