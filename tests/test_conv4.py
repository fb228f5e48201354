"""metafast.nn.Conv4: shapes, batch-norm semantics, and exact meta-gradients of
BatchedMAML on it against the eager per-task reference (float64)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import metafast
from metafast import reference
from metafast.nn.conv4 import Conv4
from helpers import assert_meta_gradients_match, assert_vmap_matches_loop, image_episodes

TOL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# --------------------------------------------------------------------------- model
def test_shapes_stride_28():
    m = Conv4(5)
    assert m(torch.randn(7, 1, 28, 28)).shape == (7, 5)
    assert m.features(torch.randn(7, 1, 28, 28)).shape == (7, 64)
    # 28 -> 14 -> 7 -> 4 -> 2
    x = torch.randn(2, 1, 28, 28)
    for block, side in zip(m.features[:4], (14, 7, 4, 2)):
        x = block(x)
        assert x.shape == (2, 64, side, side)


def test_shapes_max_84():
    m = Conv4(5, hidden=32, in_channels=3, pooling="max")
    x = torch.randn(2, 3, 84, 84)
    assert m(x).shape == (2, 5)
    for block, side in zip(m.features[:4], (42, 21, 10, 5)):
        x = block(x)
        assert x.shape == (2, 32, side, side)
    assert isinstance(m.head, torch.nn.Linear) and m.head.in_features == 32


def test_bad_args():
    with pytest.raises(ValueError, match="pooling"):
        Conv4(5, pooling="avg")
    with pytest.raises(ValueError):
        Conv4(0)


def test_parameters_only_and_batch_statistics():
    m = Conv4(3, hidden=4)
    assert not list(m.buffers())  # no running statistics
    assert len(list(m.parameters())) == 4 * 3 + 2  # conv weight, bn weight/bias per block; head
    x = torch.randn(6, 1, 12, 12)
    m.train()
    a = m(x)
    m.eval()
    b = m(x)
    torch.testing.assert_close(a, b)  # batch statistics in eval mode too (transductive)
    # the same as an explicit F.batch_norm(training=True) forward
    h = x
    for block in m.features[:4]:
        conv, bn = block[0], block[1]
        h = F.relu(F.batch_norm(conv(h), None, None, bn.weight, bn.bias, training=True, eps=bn.eps))
    torch.testing.assert_close(a, m.head(h.mean((-2, -1))))


def test_vmap_functional_call_matches_loop():
    assert_vmap_matches_loop(Conv4(3, hidden=4).double(), (5, 1, 12, 12))


# --------------------------------------------------------------------------- meta-gradients
def _problem(seed=0, tasks=2, ways=3, shots=2, queries=2, side=10, hidden=4):
    torch.manual_seed(seed)
    model = Conv4(ways, hidden=hidden).double()
    return (model, *image_episodes(tasks, ways, shots, queries, 1, side, seed))


def _grads(params):
    return [p.grad.detach().clone() for p in params]


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradients_match_reference(first_order, steps):
    model, sx, sy, qx, qy = _problem()
    meta = metafast.BatchedMAML(model, inner_lr=0.4, inner_steps=steps, first_order=first_order,
                                loss="cross_entropy", backend="torch")
    out = meta(sx, sy, qx, qy)
    assert out.query_output.shape == (2, 6, 3) and out.support_losses.shape == (2, steps)

    ref = reference.meta_loss(model, sx, sy, qx, qy, inner_lr=0.4, inner_steps=steps, first_order=first_order,
                              loss="cross_entropy")
    assert_meta_gradients_match(model, out, ref)


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_sgd_meta_gradients_match_reference(first_order, steps):
    model, sx, sy, qx, qy = _problem(seed=1)
    meta = metafast.BatchedMAML(model, inner_lr=0.3, inner_steps=steps, first_order=first_order, meta_sgd=True,
                                loss="cross_entropy", backend="torch")
    with torch.no_grad():  # non-uniform learned rates make the check stronger
        for lr in meta.inner_lrs:
            lr.uniform_(0.1, 0.5)
    lr_params = list(meta.inner_lrs)
    model_params = list(model.parameters())
    assert {id(p) for p in meta.parameters()} == {id(p) for p in model_params + lr_params}
    meta(sx, sy, qx, qy).loss.backward()
    got, got_lr = _grads(model_params), _grads(lr_params)

    ref_lrs = [lr.detach().clone().requires_grad_() for lr in lr_params]
    model.zero_grad()
    ref = reference.meta_loss(model, sx, sy, qx, qy, inner_lr=0.3, inner_steps=steps, first_order=first_order,
                              loss="cross_entropy", lrs=ref_lrs)
    ref.backward()
    want, want_lr = _grads(model_params), [lr.grad for lr in ref_lrs]
    for a, b in zip(got + got_lr, want + want_lr):
        assert rel_err(a, b) < TOL
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert flat(want_lr).norm() > 0
    assert rel_err(flat(got_lr), flat(want_lr)) < TOL


def _anil_reference(model, sx, sy, qx, qy, inner_lr, steps, first_order):
    """ANIL written out: the body runs once per task, only head.weight/head.bias adapt."""
    total = 0.0
    for t in range(sx.shape[0]):
        head = {"weight": model.head.weight, "bias": model.head.bias}
        fs, fq = model.features(sx[t]), model.features(qx[t])
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model.head, head, (fs,)), sy[t])
            g = torch.autograd.grad(loss, list(head.values()), create_graph=not first_order)
            head = {k: v - inner_lr * gi for (k, v), gi in zip(head.items(), g)}
        total = total + F.cross_entropy(functional_call(model.head, head, (fq,)), qy[t])
    return total / sx.shape[0]


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 2])
def test_anil_meta_gradients_match_reference(backend, first_order, steps):
    model, sx, sy, qx, qy = _problem(seed=2)
    meta = metafast.BatchedMAML(model, inner_lr=0.5, inner_steps=steps, first_order=first_order,
                                loss="cross_entropy", backend=backend, adapt="head")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "auto" may fall back to torch
        meta(sx, sy, qx, qy).loss.backward()
    got = _grads(model.parameters())
    # "auto" runs the head's inner loop in the fused kernel when the extension is built
    expected = "fused" if backend == "auto" and metafast._extension.available() else "torch"
    assert meta.backend_used == expected

    model.zero_grad()
    ref = _anil_reference(model, sx, sy, qx, qy, 0.5, steps, first_order)
    ref.backward()
    want = _grads(model.parameters())
    for a, b in zip(got, want):
        assert rel_err(a, b) < TOL
    # the body gets a meta-gradient too (through the adapted head)
    assert want[0].norm() > 0

    model.zero_grad()
    ref2 = reference.meta_loss(model, sx, sy, qx, qy, inner_lr=0.5, inner_steps=steps, first_order=first_order,
                               loss="cross_entropy", adapt_names=["head.weight", "head.bias"])
    assert abs(ref2.item() - ref.item()) <= TOL * abs(ref.item())


def test_adapt_predict_and_test_time_steps():
    model, sx, sy, qx, qy = _problem(seed=3)
    meta = metafast.BatchedMAML(model, inner_lr=0.4, inner_steps=1, loss="cross_entropy", backend="torch")
    with torch.no_grad():
        params = meta.adapt(sx, sy, steps=3)
        logits = meta.predict(params, qx)
    assert logits.shape == (2, 6, 3)
    assert params["features.0.0.weight"].shape == (2, 4, 1, 3, 3)
    # equals the reference's adaptation with 3 steps
    named = dict(model.named_parameters())
    for t in range(2):
        adapted, _ = reference.adapt_task(model, dict(named), sx[t], sy[t], 0.4, 3, first_order=True,
                                          loss="cross_entropy")
        want = functional_call(model, adapted, (qx[t],))
        assert rel_err(logits[t], want.detach()) < TOL
