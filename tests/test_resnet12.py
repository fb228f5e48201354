"""metafast.nn.ResNet12: layout, batch-norm semantics, DropBlock, and exact meta-gradients of
BatchedMAML on it against the eager per-task reference (float64, tiny instance)."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vmap

import metafast
from metafast import reference
from metafast.nn import ResNet12
from metafast.nn.resnet12 import DropBlock

TOL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# --------------------------------------------------------------------------- model
def test_layout_wide_and_narrow():
    m = ResNet12(5)
    assert m.channels == (64, 160, 320, 640) and m.head.in_features == 640 and m.head.out_features == 5
    assert ResNet12(5, wide=False).channels == (64, 128, 256, 512)
    assert ResNet12(5, channels=(8, 8, 16, 16)).head.in_features == 16
    block = m.features[0]
    convs = [block.conv1, block.conv2, block.conv3]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 and all(c.bias is None for c in convs)
    assert block.shortcut[0].kernel_size == (1, 1) and isinstance(block.shortcut[1], torch.nn.BatchNorm2d)
    assert block.act.negative_slope == 0.1 and not any(isinstance(x, DropBlock) for x in m.modules())
    # MetaOptNet's wide ResNet-12 has 12.4M parameters (head excluded)
    body = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("head"))
    assert 12.3e6 < body < 12.5e6


def test_shapes():
    m = ResNet12(5, channels=(4, 4, 4, 6))
    x = torch.randn(2, 3, 84, 84)
    assert m(x).shape == (2, 5) and m.features(x).shape == (2, 6)
    for block, side in zip(m.features[:4], (42, 21, 10, 5)):
        x = block(x)
        assert x.shape[-1] == side
    assert ResNet12(3, channels=(4, 4, 4, 4), in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError):
        ResNet12(5, channels=(4, 4, 4))


def test_parameters_only_and_batch_statistics():
    m = ResNet12(3, channels=(4, 4, 4, 4))
    assert not list(m.buffers())
    assert len(list(m.parameters())) == 4 * (4 + 4 * 2) + 2  # per block 4 convs, 4 BN weight+bias; head
    x = torch.randn(6, 3, 16, 16)
    a = m.train()(x)
    b = m.eval()(x)
    torch.testing.assert_close(a, b)  # batch statistics in eval too (transductive, as Conv4)


def test_dropblock():
    m = ResNet12(3, channels=(4, 4, 4, 4), dropblock=0.3, dropblock_size=3)
    assert [isinstance(b.dropblock, DropBlock) for b in m.features[:4]] == [False, False, True, True]
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    a = m.train()(x)
    b = m(x)
    assert not torch.equal(a, b)  # random in training
    torch.testing.assert_close(m.eval()(x), m.eval()(x))  # identity in evaluation
    d = DropBlock(0.2, 3).train()
    h = torch.ones(64, 8, 12, 12)
    out = d(h)
    zero = (out == 0).float().mean().item()
    assert 0.1 < zero < 0.35 and abs(out.mean().item() - 1) < 1e-6  # rescaled to keep the mean
    with pytest.raises(ValueError):
        DropBlock(0.1, 4)


def test_vmap_functional_call_matches_loop():
    m = ResNet12(3, channels=(4, 4, 4, 4)).double()
    params = {n: p.detach().unsqueeze(0).repeat(3, *[1] * p.dim()) + 0.01 * torch.randn(3, *p.shape, dtype=p.dtype)
              for n, p in m.named_parameters()}
    x = torch.randn(3, 5, 3, 16, 16, dtype=torch.float64)
    out = vmap(lambda p, xt: functional_call(m, p, (xt,)))(params, x)
    for t in range(3):
        ref = functional_call(m, {n: v[t] for n, v in params.items()}, (x[t],))
        torch.testing.assert_close(out[t], ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- meta-gradients
def _problem(seed=0, tasks=2, ways=3, shots=1, queries=1, side=16):
    """16x16 is the smallest side four 2x2 pools leave non-empty (16 -> 8 -> 4 -> 2 -> 1)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ResNet12(ways, channels=(4, 4, 4, 4)).double()
    sx = torch.randn(tasks, ways * shots, 3, side, side, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, ways * queries, 3, side, side, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return model, sx, sy, qx, qy


def _grads(params):
    return [p.grad.detach().clone() for p in params]


@pytest.mark.parametrize("adapt", ["all", "head"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradients_match_reference(adapt, first_order, steps):
    model, sx, sy, qx, qy = _problem()
    meta = metafast.BatchedMAML(model, inner_lr=0.4, inner_steps=steps, first_order=first_order,
                                loss="cross_entropy", backend="torch", adapt=adapt)
    out = meta(sx, sy, qx, qy)
    assert out.query_output.shape == (2, 3, 3)
    out.loss.backward()
    got = _grads(model.parameters())
    model.zero_grad()

    names = ["head.weight", "head.bias"] if adapt == "head" else None
    ref = reference.meta_loss(model, sx, sy, qx, qy, inner_lr=0.4, inner_steps=steps, first_order=first_order,
                              loss="cross_entropy", adapt_names=names)
    ref.backward()
    want = _grads(model.parameters())
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        assert b.norm() > 0 and rel_err(a, b) < TOL, (name, rel_err(a, b))
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert rel_err(flat(got), flat(want)) < TOL
