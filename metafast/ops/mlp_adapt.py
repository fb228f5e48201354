"""metafast::mlp_adapt: the whole MAML inner loop of an MLP for a meta-batch.

Schema: csrc/library.cpp. Kernels: csrc/kernels/mlp/task.h (the per-task
algorithm, shared by CPU and CUDA), csrc/ops/mlp_adapt/{cpu.cpp,cuda.cpp,kernel.cu};
their checks: csrc/ops/mlp_adapt/host.h.

Parameters are one flat vector θ = [W1, b1, W2, b2, ...] (nn.Linear layout,
the order of ``model.parameters()`` for a Linear/activation stack). Inner
losses are means over the support set (MSE: over every output element).
"""
from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
import torch.nn.functional as F

from metafast import _extension
from metafast.ops._dispatch import kernel_available

ACTIVATIONS = ("relu", "tanh")
LOSSES = ("mse", "cross_entropy")
# The kernels' limits (csrc/kernels/mlp/limits.h, copied by the build); None where unbuilt.
MAX_LAYERS, MAX_WIDTH, MAX_STEPS = _extension.mlp_limits()


def within(value: int, limit: int | None) -> bool:
    """value <= limit, where a limit of None (no kernel built) admits anything."""
    return limit is None or value <= limit


def mlp_num_params(sizes: Sequence[int]) -> int:
    return sum(sizes[i] * sizes[i - 1] + sizes[i] for i in range(1, len(sizes)))


def _layers(theta: torch.Tensor, sizes: Sequence[int]):
    """Views (W_l [T, d_l, d_{l-1}], b_l [T, d_l]) of a batched flat θ [T, P]."""
    offset, out = 0, []
    for din, dout in zip(sizes[:-1], sizes[1:]):
        w = theta[:, offset : offset + dout * din].reshape(theta.shape[0], dout, din)
        offset += dout * din
        b = theta[:, offset : offset + dout]
        offset += dout
        out.append((w, b))
    return out


def mlp_forward(theta: torch.Tensor, x: torch.Tensor, sizes: Sequence[int], activation: str = "relu") -> torch.Tensor:
    """Batched MLP forward: θ [T, P], x [T, N, d_in] -> [T, N, d_out] (batched matmuls)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"metafast::mlp_forward: unsupported activation {activation!r} (supported: {ACTIVATIONS})")
    act = torch.relu if activation == "relu" else torch.tanh
    h = x
    layers = _layers(theta, sizes)
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(layers) - 1:
            h = act(h)
    return h


def task_losses(output: torch.Tensor, target: torch.Tensor, loss: str,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-task mean loss [T] of a batched output [T, N, ...]: the mean over the
    N examples of each example's loss (MSE: the mean over its outputs), each
    multiplied by weights [T, N] when given."""
    if loss == "mse":
        if weights is None:
            return ((output - target) ** 2).flatten(1).mean(1)
        per_example = ((output - target) ** 2).flatten(2).mean(2)
    else:
        t, n, c = output.shape
        per_example = F.cross_entropy(output.reshape(t * n, c), target.reshape(t * n), reduction="none").view(t, n)
    return (per_example if weights is None else weights * per_example).mean(1)


def as_layer_sizes(sizes) -> list[int]:
    """Layer widths as ints; floats (1.5) and bools are refused, not truncated."""
    try:
        if any(isinstance(w, bool) for w in sizes):
            raise TypeError
        return [operator.index(w) for w in sizes]
    except TypeError:
        raise ValueError(f"metafast::mlp_adapt: layer sizes must be integers, got {list(sizes)}") from None


def check_mlp_adapt_args(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation,
                         loss, support_weights=None, query_every_step=False) -> None:
    """The checks of csrc/ops/mlp_adapt/host.h (the truth for the op), mirrored for
    the fake kernel and for the pure-PyTorch fallback."""
    def check(cond, message):
        torch._check_value(cond, lambda: f"metafast::mlp_adapt: {message}")

    check(len(sizes) >= 2 and within(len(sizes) - 1, MAX_LAYERS),
          f"sizes must list 2 to {MAX_LAYERS + 1} layer widths, got {len(sizes)}")
    for i, w in enumerate(sizes):
        check(w >= 1 and within(w, MAX_WIDTH), f"layer width {i} must be in [1, {MAX_WIDTH}], got {w}")
    check(activation in ACTIVATIONS, f"unsupported activation '{activation}' (supported: {ACTIVATIONS})")
    check(loss in LOSSES, f"unsupported loss '{loss}' (supported: {LOSSES})")
    check(params.dtype in (torch.float32, torch.float64), f"params must be float32 or float64, got {params.dtype}")
    num_params = mlp_num_params(sizes)
    check(params.dim() == 1 and params.numel() == num_params,
          f"params must be the flat vector [W1, b1, ...] of {num_params} elements for sizes {list(sizes)}, "
          f"got shape {list(params.shape)}")
    named = [("lrs", lrs), ("support_x", support_x), ("query_x", query_x), ("support_weights", support_weights)]
    for name, t in named:
        if t is not None:
            check(t.device == params.device, f"{name} is on {t.device} but params is on {params.device}")
            check(t.dtype == params.dtype, f"{name} has dtype {t.dtype} but params has {params.dtype}")
    if lrs is not None:
        check(lrs.shape == params.shape or lrs.shape == (steps, num_params),
              f"lrs must have the shape of params {list(params.shape)} or be one row per step "
              f"[{steps}, {num_params}], got {list(lrs.shape)}")
    else:
        check(math.isfinite(lr), f"lr must be finite, got {lr}")
    check(support_x.dim() == 3 and support_x.shape[2] == sizes[0],
          f"support_x must be [tasks, shots, {sizes[0]}], got {list(support_x.shape)}")
    t, k = support_x.shape[:2]
    check(t > 0 and k > 0, f"support_x has an empty task or support set: {list(support_x.shape)}")
    check(steps >= 1 and within(steps, MAX_STEPS), f"steps must be in [1, {MAX_STEPS}], got {steps}")
    if support_weights is not None:
        check(support_weights.shape == (t, k), f"support_weights must be [{t}, {k}] (one weight per support "
                                               f"example), got {list(support_weights.shape)}")
    check((query_x is None) == (query_y is None), "give both query_x and query_y, or neither")
    check(query_x is not None or not query_every_step, "query_every_step needs a query set")
    sets = [("support_y", support_y, k)]
    if query_x is not None:
        check(query_x.dim() == 3 and query_x.shape[0] == t and query_x.shape[2] == sizes[0],
              f"query_x must be [{t}, queries, {sizes[0]}], got {list(query_x.shape)}")
        check(query_x.shape[1] > 0, "query_x has an empty query set")
        sets.append(("query_y", query_y, query_x.shape[1]))
    for name, y, rows in sets:
        check(y.device == params.device, f"{name} is on {y.device} but params is on {params.device}")
        if loss == "mse":
            check(y.dtype == params.dtype, f"MSE {name} must have dtype {params.dtype}, got {y.dtype}")
            check(y.shape == (t, rows, sizes[-1]), f"MSE {name} must be [{t}, {rows}, {sizes[-1]}], "
                                                   f"got {list(y.shape)}")
        else:
            check(y.dtype == torch.int64, f"cross-entropy {name} must hold int64 class indices, got {y.dtype}")
            check(y.shape == (t, rows), f"cross-entropy {name} must be [{t}, {rows}], got {list(y.shape)}")


def check_label_range(classes: int, *labels: torch.Tensor | None) -> None:
    """Class labels must lie in [0, classes). Reads the values (one device
    synchronisation), so it is skipped while a CUDA graph is being captured;
    the fused kernel then turns a bad label into NaN rather than reading out
    of bounds."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return
    present = [y.reshape(-1) for y in labels if y is not None and y.numel() > 0]
    if not present:
        return
    values = torch.cat(present)
    lo, hi = torch.aminmax(values)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= classes:
        raise ValueError(f"metafast::mlp_adapt: class labels must be in [0, {classes}), got values in [{lo}, {hi}]")


def mlp_adapt_torch(params, lrs, lr, support_x, support_y, sizes, steps, activation="relu", loss="mse",
                    first_order=False, query_x=None, query_y=None, support_weights=None, query_every_step=False,
                    step_rates=False):
    """Pure-PyTorch mlp_adapt (batched over tasks): the fallback, and the
    differentiable formula used when a gradient of the gradient is asked for.
    ``lrs``: [P] or per task [T, P]; with ``step_rates`` a row per step, [S, P] or
    [T, S, P] (the op's [S, P] rates: ``step_rates=lrs.dim() == 2``).
    Returns (adapted, support_losses[, query_output, query_losses])."""
    grad_wanted = torch.is_grad_enabled()
    t = support_x.shape[0]
    with torch.enable_grad():
        theta = params.expand(t, -1)
        if not theta.requires_grad:
            theta = theta.detach().requires_grad_()
        losses, step_query_losses = [], []
        for step in range(steps):
            rate = lr if lrs is None else lrs[..., step, :] if step_rates else lrs
            task_loss = task_losses(mlp_forward(theta, support_x, sizes, activation), support_y, loss, support_weights)
            losses.append(task_loss)
            # retain_graph: the support losses stay differentiable in first order too.
            (g,) = torch.autograd.grad(task_loss.sum(), theta, create_graph=grad_wanted and not first_order,
                                       retain_graph=True)
            theta = theta - rate * g
            if query_every_step and step + 1 < steps:
                step_query_losses.append(task_losses(mlp_forward(theta, query_x, sizes, activation), query_y, loss))
        outputs = [theta, torch.stack(losses, 1)]
        if query_x is not None:
            query_output = mlp_forward(theta, query_x, sizes, activation)
            query_losses = task_losses(query_output, query_y, loss)
            if query_every_step:
                query_losses = torch.stack(step_query_losses + [query_losses], 1)
            outputs += [query_output, query_losses]
    if not grad_wanted:
        outputs = [o.detach() for o in outputs]
    return tuple(outputs)


def mlp_adapt(
    params: torch.Tensor,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    sizes: Sequence[int],
    steps: int = 1,
    lr: float = 0.01,
    lrs: torch.Tensor | None = None,
    activation: str = "relu",
    loss: str = "mse",
    first_order: bool = False,
    query_x: torch.Tensor | None = None,
    query_y: torch.Tensor | None = None,
    check_labels: bool = True,
    support_weights: torch.Tensor | None = None,
    query_every_step: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Adapt an MLP to every task of a meta-batch in one fused call.

    Args:
        params: flat initial parameters [P] shared by all tasks.
        support_x: [T, K, d_in]; support_y: [T, K, d_out] (MSE) or [T, K] int64 (cross-entropy).
        sizes: layer widths [d_in, ..., d_out]; steps: inner steps; lr: scalar inner rate
            (a number, or a one-element tensor, differentiated when it requires grad),
            or lrs [P]: per-parameter rates (Meta-SGD), or lrs [steps, P]: a row
            of rates per inner step (MAML++'s LSLR, each layer's rate expanded
            over its elements).
        first_order: the backward ignores second derivatives (first-order MAML).
        query_x, query_y: optional query set [T, Q, d_in] / targets; the query
            forward at the adapted parameters then runs in the same launch.
        check_labels: on a GPU, read the class labels to check their range (one
            synchronisation; skipped during CUDA-graph capture). False for a
            caller that checked them already; the kernel turns a bad label into
            NaN, never an out-of-bounds read. The CPU kernel always checks.
        support_weights: optional [T, K] weight of each support example's loss
            (a task's support loss is Σ_k w_k·ℓ_k / K, so all ones is the plain
            mean; zero masks a padded example; negative weights are allowed, as
            in an advantage-weighted policy-gradient loss). Data, not
            differentiated: a tensor that requires grad is refused.
        query_every_step: the query loss after every inner step (MAML++'s
            multi-step loss): query_losses is then [T, steps], weighted by
            the caller (its gradient is each step's weight).

    Returns:
        (adapted [T, P], support_losses [T, steps]) and, with a query set,
        (..., query_output [T, Q, d_out], query_losses [T]); all differentiable
        w.r.t. params, lrs, support_x and query_x, exactly (second order unless
        first_order).
    """
    sizes = as_layer_sizes(sizes)
    if isinstance(steps, bool) or int(steps) != steps:
        raise ValueError(f"metafast::mlp_adapt: steps must be an integer, got {steps!r}")
    steps = int(steps)
    if isinstance(lr, torch.Tensor) and lrs is None and lr.requires_grad and torch.is_grad_enabled():
        # A learnable scalar rate: the per-parameter rates lr·1 are exactly the same
        # update, and their gradient sums back into lr through the expand.
        if lr.numel() != 1:
            raise ValueError(f"metafast::mlp_adapt: lr must be a number or a one-element tensor, got shape "
                             f"{list(lr.shape)}")
        lrs, lr = lr.reshape(()).to(params).expand(params.shape).contiguous(), 0.0
    elif isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"metafast::mlp_adapt: lr must be a number or a one-element tensor, got shape "
                         f"{list(lr.shape)}")
    lr = float(lr)
    for name, y in (("support_y", support_y), ("query_y", query_y), ("support_weights", support_weights)):
        if y is not None and y.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"metafast::mlp_adapt: gradients with respect to {name} are not supported; "
                             f"detach {name}")
    if not kernel_available(params.device):
        check_mlp_adapt_args(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
                             support_weights, query_every_step)
        if loss == "cross_entropy":
            check_label_range(sizes[-1], support_y, query_y)
        return mlp_adapt_torch(params, lrs, lr, support_x, support_y, sizes, steps, activation, loss, first_order,
                               query_x, query_y, support_weights, bool(query_every_step),
                               step_rates=lrs is not None and lrs.dim() == 2)
    if loss == "cross_entropy" and params.device.type == "cuda" and check_labels:
        check_label_range(sizes[-1], support_y, query_y)
    adapted, losses, query_output, query_losses, _ = torch.ops.metafast.mlp_adapt(
        params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss, bool(first_order),
        support_weights, bool(query_every_step),
    )
    return (adapted, losses) if query_x is None else (adapted, losses, query_output, query_losses)


def check_meta_grad_args(params, lrs, tasks, steps, grad_query_losses, lrs_grad, query_every_step) -> None:
    """The checks mlp_meta_grad adds to mlp_adapt's (csrc/ops/mlp_adapt/host.h:
    check_meta_grad_inputs), mirrored for the fake kernel and the fallback."""
    shape = (tasks, steps) if query_every_step else (tasks,)
    torch._check_value(grad_query_losses.shape == shape, lambda: f"metafast::mlp_meta_grad: grad_query_losses "
                       f"must have the query losses' shape {list(shape)}, got {list(grad_query_losses.shape)}")
    torch._check_value(grad_query_losses.dtype == params.dtype and grad_query_losses.device == params.device,
                       lambda: "metafast::mlp_meta_grad: grad_query_losses must have params' dtype and device")
    torch._check_value(not lrs_grad or lrs is not None, lambda: "metafast::mlp_meta_grad: lrs_grad needs lrs")


def mlp_meta_grad(params: torch.Tensor, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                  query_y: torch.Tensor, sizes: Sequence[int], steps: int = 1, lr: float = 0.01,
                  lrs: torch.Tensor | None = None, activation: str = "relu", loss: str = "mse",
                  first_order: bool = False, grad_query_losses: torch.Tensor | None = None, lrs_grad: bool = False,
                  support_weights: torch.Tensor | None = None, query_every_step: bool = False,
                  check_labels: bool = True) -> tuple[torch.Tensor, ...]:
    """One meta-iteration in one call: ``mlp_adapt`` with its query set, and the
    gradient of the meta-loss Σ grad_query_losses·query_losses with respect to
    params (and lrs when ``lrs_grad``), summed over the tasks.

    ``grad_query_losses``: the meta-loss's weight of each query loss, [T] (or
    [T, steps] with ``query_every_step``); default 1/T each, the mean query
    loss. The other arguments are ``mlp_adapt``'s. Returns (support_losses
    [T, steps], query_output [T, Q, d_out], query_losses, grad_params [P],
    grad_lrs (lrs' shape) or None). Nothing returned is differentiable: this is
    the forward and the backward of the meta-loss at once, for a caller that
    puts the gradient into autograd itself (BatchedMAML's fused backend).
    """
    sizes = as_layer_sizes(sizes)
    steps = int(steps)
    t = support_x.shape[0]
    if grad_query_losses is None:
        grad_query_losses = torch.full((t, steps) if query_every_step else (t,), 1.0 / t, dtype=params.dtype,
                                       device=params.device)
    if not kernel_available(params.device):
        check_mlp_adapt_args(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
                             support_weights, query_every_step)
        check_meta_grad_args(params, lrs, t, steps, grad_query_losses, lrs_grad, query_every_step)
        if loss == "cross_entropy":
            check_label_range(sizes[-1], support_y, query_y)
        with torch.enable_grad():
            inputs = [params.detach().requires_grad_()] + ([lrs.detach().requires_grad_()] if lrs_grad else [])
            _, support_losses, query_output, query_losses = mlp_adapt_torch(
                inputs[0], inputs[1] if lrs_grad else lrs, lr, support_x, support_y, sizes, steps, activation, loss,
                first_order, query_x, query_y, support_weights, bool(query_every_step),
                step_rates=lrs is not None and lrs.dim() == 2)
            grads = torch.autograd.grad(query_losses, inputs, grad_query_losses)
        return (support_losses.detach(), query_output.detach(), query_losses.detach(), grads[0],
                grads[1] if lrs_grad else None)
    if loss == "cross_entropy" and params.device.type == "cuda" and check_labels:
        check_label_range(sizes[-1], support_y, query_y)
    support_losses, query_output, query_losses, grad_params, grad_lrs = torch.ops.metafast.mlp_meta_grad(
        params, lrs, float(lr), support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
        bool(first_order), grad_query_losses, bool(lrs_grad), support_weights, bool(query_every_step))
    return support_losses, query_output, query_losses, grad_params, grad_lrs if lrs_grad else None


if _extension.available():

    @torch.library.register_fake("metafast::mlp_meta_grad")
    def _(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss, first_order,
          grad_query_losses, lrs_grad, support_weights=None, query_every_step=False):
        check_mlp_adapt_args(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
                             support_weights, query_every_step)
        t = support_x.shape[0]
        check_meta_grad_args(params, lrs, t, steps, grad_query_losses, lrs_grad, query_every_step)
        shape = (t, steps) if query_every_step else (t,)
        return (params.new_empty(t, steps), params.new_empty(t, query_x.shape[1], sizes[-1]),
                params.new_empty(shape), params.new_empty(params.shape),
                params.new_empty(lrs.shape if lrs_grad else (0,)))

    @torch.library.register_fake("metafast::mlp_adapt")
    def _(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss, first_order,
          support_weights=None, query_every_step=False):
        check_mlp_adapt_args(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
                             support_weights, query_every_step)
        t, p = support_x.shape[0], params.shape[0]
        if query_x is None:
            query_output, query_losses = params.new_empty(0), params.new_empty(0)
        else:
            query_output = params.new_empty(t, query_x.shape[1], sizes[-1])
            query_losses = params.new_empty((t, steps) if query_every_step else (t,))
        return (params.new_empty(t, p), params.new_empty(t, steps), query_output, query_losses,
                params.new_empty(t, steps, p))

    @torch.library.register_fake("metafast::mlp_adapt_backward")
    def _(grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory, params, lrs, lr,
          support_x, support_y, query_x, query_y, sizes, activation, loss, first_order, lrs_grad, x_grad,
          query_x_grad, support_weights=None, query_every_step=False):
        steps = trajectory.shape[1] if trajectory.dim() == 3 else 0
        check_mlp_adapt_args(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
                             support_weights, query_every_step)
        t, p = support_x.shape[0], params.shape[0]
        torch._check_value(grad_adapted.shape == (t, p) and trajectory.shape == (t, steps, p)
                           and (grad_losses is None or grad_losses.shape == (t, steps)),
                           lambda: "metafast::mlp_adapt_backward: grad_adapted, grad_losses or trajectory has the "
                                   "wrong shape")
        torch._check_value(not lrs_grad or lrs is not None, lambda: "metafast::mlp_adapt_backward: lrs_grad needs lrs")
        k, d = support_x.shape[1:]
        q = 0 if query_x is None else query_x.shape[1]
        return (
            params.new_empty(t, p),
            params.new_empty(((t, *lrs.shape) if lrs_grad else (0, 0))),
            params.new_empty((t, k, d) if x_grad else (0, 0, 0)),
            params.new_empty((t, q, d) if query_x_grad else (0, 0, 0)),
        )

    def _setup_context(ctx, inputs, output):
        (params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
         first_order, support_weights, query_every_step) = inputs
        if support_weights is not None and support_weights.requires_grad:
            raise ValueError("metafast::mlp_adapt: gradients with respect to support_weights are not supported; "
                             "detach support_weights")
        ctx.mark_non_differentiable(output[4])
        # An unused output's gradient stays None (not zeros): no [T, S, P] fill
        # for the trajectory, and no 0·NaN where a support loss is NaN.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(params, lrs, support_x, support_y, query_x, query_y, output[0], output[4], support_weights)
        ctx.config = (lr, list(sizes), steps, activation, loss, first_order, query_every_step)

    def _backward(ctx, grad_adapted, grad_losses, grad_query_output, grad_query_losses, _grad_trajectory):
        params, lrs, support_x, support_y, query_x, query_y, adapted, trajectory, weights = ctx.saved_tensors
        lr, sizes, steps, activation, loss, first_order, every_step = ctx.config
        need_lrs, need_x, need_qx = ctx.needs_input_grad[1], ctx.needs_input_grad[3], ctx.needs_input_grad[5]
        t = support_x.shape[0]
        if grad_adapted is None:
            grad_adapted = params.new_zeros(t, params.shape[0])
        if query_x is None:
            grad_query_output = grad_query_losses = None
        if torch.is_grad_enabled():
            # A gradient of this gradient is wanted: use the differentiable torch formula.
            wanted = [(params, ctx.needs_input_grad[0]), (lrs, need_lrs), (support_x, need_x), (query_x, need_qx)]
            inputs = [x for x, need in wanted if need]
            with torch.enable_grad():
                outs = mlp_adapt_torch(params, lrs, lr, support_x, support_y, sizes, steps, activation, loss,
                                       first_order, query_x, query_y, weights, every_step,
                                       step_rates=lrs is not None and lrs.dim() == 2)
                pairs = [(o, g) for o, g in zip(outs, (grad_adapted, grad_losses, grad_query_output,
                                                        grad_query_losses)) if g is not None]
                grads = list(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                                 create_graph=True, allow_unused=True))
            result = [grads.pop(0) if need else None for _, need in wanted]
            g_params, g_lrs, g_x, g_qx = result
        else:
            g_params, g_lrs, g_x, g_qx = torch.ops.metafast.mlp_adapt_backward(
                grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory, params, lrs,
                lr, support_x, support_y, query_x, query_y, sizes, activation, loss, first_order, need_lrs, need_x,
                need_qx, weights, every_step,
            )
            g_params = g_params.sum(0)
            g_lrs = g_lrs.sum(0) if need_lrs else None
            g_x = g_x if need_x else None
            g_qx = g_qx if need_qx else None
        return g_params, g_lrs, None, g_x, None, g_qx, None, None, None, None, None, None, None, None

    torch.library.register_autograd("metafast::mlp_adapt", _backward, setup_context=_setup_context)
