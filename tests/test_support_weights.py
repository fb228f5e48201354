"""Per-example support loss weights (support_weights [T, K]): a task's inner
loss is Σ_k w_k·ℓ_k / K. The fused op (every CPU path), the torch formula and
BatchedMAML (both backends) against the weighted eager loop in float64 (1e-10);
zero weights mask padded examples exactly; bad weights get clear errors."""
import pytest
import torch
from helpers import DEVICES, max_rel_err, random_mlp_task, requires_extension
from helpers import TOL, eager_adapt, random_config
from torch import nn

import metafast
from metafast.ops import mlp_adapt, mlp_adapt_torch
from metafast.reference import meta_loss

pytestmark = pytest.mark.kernels  # CI runs these beside other torch versions too

CPU_PATHS = ["packed", "per-task"]


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_()


def op_against_eager(cfg, first_order, seed, device="cpu", fn=mlp_adapt):
    torch.manual_seed(seed)
    sizes = cfg["sizes"]
    model = metafast.nn.MLP(sizes, cfg["activation"]).to(device, torch.float64)
    flat = flat_params(model)
    sx, sy, _, _ = random_mlp_task(sizes, cfg["tasks"], cfg["shots"], 1, cfg["loss"], torch.float64, device)
    sx.requires_grad_()
    w = torch.rand(cfg["tasks"], cfg["shots"], dtype=torch.float64, device=device) * 3 - 1  # negative too
    w_a = torch.randn(cfg["tasks"], flat.numel(), dtype=torch.float64, device=device)
    w_l = torch.randn(cfg["tasks"], cfg["steps"], dtype=torch.float64, device=device)
    if fn is mlp_adapt:
        a, losses = mlp_adapt(flat, sx, sy, sizes, cfg["steps"], lr=cfg["lr"], activation=cfg["activation"],
                              loss=cfg["loss"], first_order=first_order, support_weights=w)
    else:
        a, losses = mlp_adapt_torch(flat, None, cfg["lr"], sx, sy, sizes, cfg["steps"], cfg["activation"],
                                    cfg["loss"], first_order, support_weights=w)
    got = torch.autograd.grad((a * w_a).sum() + (losses * w_l).sum(), [flat, sx])
    ra, rl = eager_adapt(model, flat, None, sx, sy, cfg["lr"], cfg["steps"], first_order, cfg["loss"], w)
    want = torch.autograd.grad((ra * w_a).sum() + (rl * w_l).sum(), [flat, sx])
    return max_rel_err([a, losses], [ra, rl]), max_rel_err(got, want)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("first_order", [False, True])
def test_fused_op_matches_weighted_eager(seed, first_order, device):
    cfg = random_config(900 + seed) | {"tasks": [1, 3, 9, 17][seed % 4], "meta_sgd": False}
    forward_err, grad_err = op_against_eager(cfg, first_order, seed, device)
    assert forward_err < TOL, cfg
    assert grad_err < TOL, cfg


@requires_extension
@pytest.mark.parametrize("kernel", CPU_PATHS)
def test_every_cpu_path_matches_weighted_eager(kernel, monkeypatch):
    monkeypatch.setenv("METAFAST_CPU_KERNEL", kernel)
    for seed in range(4):
        cfg = random_config(950 + seed) | {"tasks": 11, "meta_sgd": False}
        forward_err, grad_err = op_against_eager(cfg, seed % 2 == 1, seed)
        assert forward_err < TOL and grad_err < TOL, (kernel, cfg)


@pytest.mark.parametrize("first_order", [False, True])
def test_torch_formula_matches_weighted_eager(first_order):
    cfg = random_config(980) | {"tasks": 3, "meta_sgd": False}
    forward_err, grad_err = op_against_eager(cfg, first_order, 0, fn=mlp_adapt_torch)
    assert forward_err < TOL and grad_err < TOL


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_zero_weights_mask_padded_examples_exactly(loss):
    """A task padded from 3 to 5 support examples, weights 5/3 on the real ones
    and 0 on the padding, adapts exactly as the unpadded task: a meta-batch of
    tasks with different numbers of examples runs in one call."""
    sizes = [2, 6, 3]
    torch.manual_seed(0)
    model = metafast.nn.MLP(sizes, "tanh").double()
    sx, sy, qx, qy = random_mlp_task(sizes, 2, 5, 4, loss)
    w = torch.tensor([[5 / 3] * 3 + [0.0] * 2] * 2, dtype=torch.float64)
    flat = flat_params(model)
    padded = mlp_adapt(flat, sx, sy, sizes, 3, lr=0.3, activation="tanh", loss=loss, query_x=qx, query_y=qy,
                       support_weights=w)
    flat2 = flat_params(model)
    plain = mlp_adapt(flat2, sx[:, :3].contiguous(), sy[:, :3].contiguous(), sizes, 3, lr=0.3, activation="tanh",
                      loss=loss, query_x=qx, query_y=qy)
    assert max_rel_err([padded[0], padded[3]], [plain[0], plain[3]]) < 1e-12
    assert max_rel_err([padded[1]], [plain[1]]) < 1e-12  # the weighted mean over 5 = the mean over 3
    g1 = torch.autograd.grad(padded[3].sum(), flat)[0]
    g2 = torch.autograd.grad(plain[3].sum(), flat2)[0]
    assert max_rel_err([g1], [g2]) < 1e-12


def residual_model():
    class Residual(nn.Module):  # not an MLP: the torch backend's autograd.grad loop
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 3)

        def forward(self, x):
            return x + self.b(torch.tanh(self.a(x)))

    return Residual()


@pytest.mark.parametrize("backend,model_kind", [("torch", "mlp"), ("torch", "residual"),
                                                pytest.param("fused", "mlp", marks=requires_extension)])
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_maml_matches_weighted_meta_loss(backend, model_kind, first_order):
    torch.manual_seed(1)
    model = (metafast.nn.MLP([3, 8, 3], "relu") if model_kind == "mlp" else residual_model()).double()
    meta = metafast.BatchedMAML(model, inner_lr=0.2, inner_steps=2, first_order=first_order, loss="mse",
                                backend=backend)
    sx, sy, qx, qy = random_mlp_task([3, 3], 5, 4, 3, "mse")
    w = torch.rand(5, 4, dtype=torch.float64) * 2
    out = meta(sx, sy, qx, qy, support_weights=w)
    assert meta.backend_used == backend
    got = torch.autograd.grad(out.loss, list(model.parameters()))
    ref = meta_loss(model, sx, sy, qx, qy, 0.2, 2, first_order, "mse", support_weights=w)
    want = torch.autograd.grad(ref, list(model.parameters()))
    assert abs(out.loss.item() - ref.item()) <= TOL * abs(ref.item())
    assert max_rel_err(got, want) < TOL
    # ... and the weights matter: unweighted gives a different meta-loss
    assert abs(meta(sx, sy, qx, qy).loss.item() - ref.item()) > 1e-6


@pytest.mark.parametrize("backend", ["torch", pytest.param("fused", marks=requires_extension)])
def test_batched_adapt_takes_weights(backend):
    torch.manual_seed(2)
    model = metafast.nn.MLP([2, 5, 2], "relu").double()
    meta = metafast.BatchedMAML(model, inner_lr=0.1, inner_steps=1, loss="cross_entropy", backend=backend)
    sx, sy, _, _ = random_mlp_task([2, 2], 3, 4, 1, "cross_entropy")
    w = torch.zeros(3, 4, dtype=torch.float64)
    params = meta.adapt(sx, sy, support_weights=w)  # all-zero weights: no step at all
    for name, p in model.named_parameters():
        assert torch.equal(params[name], p.detach().expand_as(params[name]))


@pytest.mark.parametrize("change, error, match", [
    (lambda w: w[:, :-1], ValueError, r"support_weights must be \[tasks, support examples\] = \[3, 4\], got \[3, 3\]"),
    (lambda w: w.float(), TypeError, "support_weights has dtype torch.float32"),
    (lambda w: w.clone().requires_grad_(), ValueError, "gradients with respect to support_weights"),
    (lambda w: w.index_fill(1, torch.tensor([2]), float("nan")), ValueError, "support_weights contains NaN or inf"),
    (lambda w: w.tolist(), TypeError, "support_weights must be a tensor"),
])
def test_batched_bad_weights_are_refused(change, error, match):
    model = metafast.nn.MLP([3, 4, 3], "relu").double()
    meta = metafast.BatchedMAML(model, inner_lr=0.1, loss="mse", backend="torch")
    sx, sy, qx, qy = random_mlp_task([3, 3], 3, 4, 2, "mse")
    with pytest.raises(error, match=match):
        meta(sx, sy, qx, qy, support_weights=change(torch.ones(3, 4, dtype=torch.float64)))


def test_weights_need_a_named_loss():
    model = metafast.nn.MLP([3, 4, 3], "relu").double()
    meta = metafast.BatchedMAML(model, inner_lr=0.1, loss=lambda out, y: ((out - y) ** 2).mean(), backend="torch")
    sx, sy, qx, qy = random_mlp_task([3, 3], 2, 4, 2, "mse")
    with pytest.raises(ValueError, match="support_weights need a named loss"):
        meta(sx, sy, qx, qy, support_weights=torch.ones(2, 4, dtype=torch.float64))


@requires_extension
def test_op_checks_weights():
    sizes = [2, 3, 1]
    params = torch.randn(metafast.ops.mlp_num_params(sizes), dtype=torch.float64)
    sx, sy, _, _ = random_mlp_task(sizes, 2, 4, 1, "mse")
    with pytest.raises(ValueError, match=r"support_weights must be \[2, 4\]"):
        torch.ops.metafast.mlp_adapt(params, None, 0.1, sx, sy, None, None, sizes, 1, "relu", "mse", False,
                                     torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="support_weights has dtype"):
        torch.ops.metafast.mlp_adapt(params, None, 0.1, sx, sy, None, None, sizes, 1, "relu", "mse", False,
                                     torch.ones(2, 4))
    with pytest.raises(ValueError, match="gradients with respect to support_weights"):
        mlp_adapt(params, sx, sy, sizes, support_weights=torch.ones(2, 4, dtype=torch.float64, requires_grad=True))


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_opcheck_with_weights(loss):
    sizes = [2, 4, 3]
    params = torch.randn(metafast.ops.mlp_num_params(sizes), dtype=torch.float64, requires_grad=True)
    sx, sy, qx, qy = random_mlp_task(sizes, 2, 3, 2, loss)
    w = torch.rand(2, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.metafast.mlp_adapt.default,
                          (params, None, 0.1, sx, sy, qx, qy, sizes, 2, "tanh", loss, False),
                          {"support_weights": w})
