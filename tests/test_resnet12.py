"""metafast.nn.ResNet12: layout, batch-norm semantics, DropBlock, and exact meta-gradients of
BatchedMAML on it against the eager per-task reference (float64, tiny instance)."""
from __future__ import annotations

import pytest
import torch

import metafast
from metafast import reference
from metafast.nn import ResNet12
from metafast.nn.resnet12 import DropBlock
from helpers import assert_meta_gradients_match, assert_vmap_matches_loop, image_episodes

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
    assert_vmap_matches_loop(ResNet12(3, channels=(4, 4, 4, 4)).double(), (5, 3, 16, 16))


# --------------------------------------------------------------------------- meta-gradients
def _problem(seed=0, tasks=2, ways=3, shots=1, queries=1, side=16):
    """16x16 is the smallest side four 2x2 pools leave non-empty (16 -> 8 -> 4 -> 2 -> 1)."""
    torch.manual_seed(seed)
    model = ResNet12(ways, channels=(4, 4, 4, 4)).double()
    return (model, *image_episodes(tasks, ways, shots, queries, 3, side, seed))


@pytest.mark.parametrize("adapt", ["all", "head"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradients_match_reference(adapt, first_order, steps):
    model, sx, sy, qx, qy = _problem()
    meta = metafast.BatchedMAML(model, inner_lr=0.4, inner_steps=steps, first_order=first_order,
                                loss="cross_entropy", backend="torch", adapt=adapt)
    out = meta(sx, sy, qx, qy)
    assert out.query_output.shape == (2, 3, 3)

    names = ["head.weight", "head.bias"] if adapt == "head" else None
    ref = reference.meta_loss(model, sx, sy, qx, qy, inner_lr=0.4, inner_steps=steps, first_order=first_order,
                              loss="cross_entropy", adapt_names=names)
    assert_meta_gradients_match(model, out, ref)
