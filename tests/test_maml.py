"""learn2learn-compatible MAML / MetaSGD: meta-gradients equal the eager
reference, clones share nothing mutable, keyword options behave as in l2l."""
import pytest
import torch
from torch import nn

import metafast
from metafast import MAML, MetaSGD
from metafast.reference import meta_loss
from helpers import max_rel_err, random_mlp_task

TOL = 1e-10


def l2l_style_meta_loss(wrapper, sx, sy, qx, qy, steps, loss_fn):
    total = 0.0
    for t in range(sx.shape[0]):
        learner = wrapper.clone()
        for _ in range(steps):
            learner.adapt(loss_fn(learner(sx[t]), sy[t]))
        total = total + loss_fn(learner(qx[t]), qy[t])
    return total / sx.shape[0]


def _tanh_mlp_and_task(seed, sizes, tasks, shots, queries, loss):
    """After ``torch.manual_seed(seed)``: a float64 tanh MLP of ``sizes`` and a random task for it."""
    torch.manual_seed(seed)
    model = metafast.nn.MLP(sizes, "tanh").double()
    return model, random_mlp_task(sizes, tasks, shots, queries, loss)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_equals_reference(first_order, loss, steps):
    torch.manual_seed(0)
    sizes = [3, 7, 5, 4]
    model = nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    sx, sy, qx, qy = random_mlp_task(sizes, 3, 5, 4, loss)
    loss_fn = metafast.losses.resolve_loss(loss)[1]
    maml = MAML(model, lr=0.3, first_order=first_order)
    got = torch.autograd.grad(l2l_style_meta_loss(maml, sx, sy, qx, qy, steps, loss_fn), list(model.parameters()))
    ref = meta_loss(model, sx, sy, qx, qy, 0.3, steps, first_order, loss)
    want = torch.autograd.grad(ref, list(model.parameters()))
    assert max_rel_err(got, want) < TOL


@pytest.mark.parametrize("first_order", [False, True])
def test_metasgd_equals_reference_including_rates(first_order):
    model, (sx, sy, qx, qy) = _tanh_mlp_and_task(1, [2, 6, 2], 4, 5, 3, "mse")
    msgd = MetaSGD(model, lr=0.2, first_order=first_order)
    with torch.no_grad():
        for r in msgd.lrs:
            r.uniform_(0.1, 0.3)
    params = list(model.parameters()) + list(msgd.lrs)
    got = torch.autograd.grad(l2l_style_meta_loss(msgd, sx, sy, qx, qy, 2, metafast.losses.mse), params)
    ref = meta_loss(model, sx, sy, qx, qy, 0.0, 2, first_order, "mse", lrs=list(msgd.lrs))
    want = torch.autograd.grad(ref, params)
    assert max_rel_err(got, want) < TOL
    assert len(list(msgd.parameters())) == 2 * len(list(model.parameters()))


def test_clone_shares_nothing_mutable_and_handles_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    maml = MAML(model, lr=0.1)
    learner = maml.clone()
    before_mean = model[1].running_mean.clone()
    x = torch.randn(8, 3)
    learner.adapt(learner(x).pow(2).mean())  # training-mode BN updates the clone's running stats only
    torch.testing.assert_close(model[1].running_mean, before_mean)
    assert not torch.equal(learner.module[1].running_mean, before_mean)
    # The adapted weights are new tensors; the parent's are untouched leaves.
    assert learner.module[0].weight is not model[0].weight
    assert model[0].weight.is_leaf and not learner.module[0].weight.is_leaf
    # Gradient flows from the clone back to the parent; the parent's structure is unchanged.
    learner(x).sum().backward()
    assert model[0].weight.grad is not None
    assert isinstance(maml.module[0].weight, nn.Parameter)


@pytest.mark.parametrize("first_order", [False, True])
def test_clone_of_a_clone_keeps_the_chain(first_order):
    # Adapt a clone, clone it again and adapt the second clone: the meta-gradient through both
    # clones and both steps equals the reference's two-step meta-gradient.
    model, (sx, sy, qx, qy) = _tanh_mlp_and_task(0, [2, 5, 3], 3, 4, 3, "cross_entropy")
    loss_fn = metafast.losses.cross_entropy
    maml = MAML(model, lr=0.4, first_order=first_order)
    total = 0.0
    for t in range(3):
        learner = maml.clone()
        learner.adapt(loss_fn(learner(sx[t]), sy[t]))
        grandchild = learner.clone()
        grandchild.adapt(loss_fn(grandchild(sx[t]), sy[t]))
        total = total + loss_fn(grandchild(qx[t]), qy[t])
    got = torch.autograd.grad(total / 3, list(model.parameters()))
    ref = meta_loss(model, sx, sy, qx, qy, 0.4, 2, first_order, "cross_entropy")
    assert max_rel_err(got, torch.autograd.grad(ref, list(model.parameters()))) < TOL


@pytest.mark.parametrize("as_parameter", [False, True])
def test_tensor_learning_rate_gets_the_reference_gradient(as_parameter):
    model, (sx, sy, qx, qy) = _tanh_mlp_and_task(0, [3, 6, 2], 3, 5, 4, "mse")
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    if as_parameter:
        lr = nn.Parameter(lr.detach())
    maml = MAML(model, lr=lr)
    if as_parameter:  # learned with the model, as in learn2learn
        assert any(p is lr for p in maml.parameters())
    wrt = [lr, *model.parameters()]
    got = torch.autograd.grad(l2l_style_meta_loss(maml, sx, sy, qx, qy, 2, metafast.losses.mse), wrt)
    want = torch.autograd.grad(meta_loss(model, sx, sy, qx, qy, lr, 2), wrt)
    assert got[0].abs() > 0
    assert max_rel_err(got, want) < TOL


@pytest.mark.parametrize("lr, exc, match", [
    (None, TypeError, "MAML: lr must be a finite number or a one-element tensor, got None"),
    (float("nan"), ValueError, "MAML: lr must be finite, got nan"),
    (float("inf"), ValueError, "must be finite, got inf"),
    (torch.tensor(float("nan")), ValueError, "must be finite, got nan"),
    (True, TypeError, "got True"),
    (torch.tensor([0.1, 0.2]), TypeError, "one-element floating-point tensor"),
])
def test_bad_learning_rates_fail_at_construction(lr, exc, match):
    model = nn.Linear(2, 1)
    with pytest.raises(exc, match=match):
        MAML(model, lr=lr)
    with pytest.raises(exc, match=match.replace("MAML", "MetaSGD")):
        MetaSGD(model, lr=lr)


def test_clone_hooks_do_not_leak_to_parent():
    model = nn.Sequential(nn.Linear(2, 2))
    learner = MAML(model, lr=0.1).clone()
    calls = []
    learner.module[0].register_forward_hook(lambda *args: calls.append(1))
    learner.module[0].register_buffer("scratch", torch.zeros(1), persistent=False)
    model(torch.randn(1, 2))
    assert calls == []  # the parent's forward does not run the clone's hook
    assert "scratch" not in model[0]._non_persistent_buffers_set
    learner(torch.randn(1, 2))
    assert calls == [1]


def test_shared_parameters_stay_shared():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    learner = MAML(model, lr=0.1).clone()
    learner.adapt(learner(torch.randn(4, 3)).sum())
    assert learner.module[0].weight is learner.module[2].weight


def test_keyword_options_like_learn2learn():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].bias.requires_grad_(False)
    x = torch.randn(5, 2)
    maml = MAML(model, lr=0.1)
    with pytest.raises(RuntimeError, match="allow_nograd"):
        maml.clone().adapt(maml(x).sum())
    learner = maml.clone(allow_nograd=True)
    learner.adapt(learner(x).sum())
    torch.testing.assert_close(learner.module[0].bias, model[0].bias)
    # An unused parameter: allow_unused keeps it unchanged.
    unused = nn.ModuleDict({"used": nn.Linear(2, 1), "unused": nn.Linear(2, 1)})
    m2 = MAML(unused, lr=0.1, allow_unused=True)
    l2 = m2.clone()
    l2.adapt(l2.module["used"](x).sum(), first_order=True)
    assert l2.module["unused"].weight is not unused["unused"].weight  # a clone...
    torch.testing.assert_close(l2.module["unused"].weight, unused["unused"].weight)  # ...unchanged


def test_first_order_clone_option():
    model = nn.Linear(2, 1)
    maml = MAML(model, lr=0.1)
    learner = maml.clone(first_order=True)
    assert learner.first_order and not maml.first_order
