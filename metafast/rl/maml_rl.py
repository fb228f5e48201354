"""MAML for reinforcement learning (Finn et al., 2017, §5.3), every task of a meta-batch at once.

Inner step: one policy-gradient step per task on the advantage-weighted
log-likelihood of its sampled actions (the reference port's reinforce_loss),
with per-task parameters [tasks, ...] (policy.batched: one baddbmm per layer for
every task); ``create_graph`` keeps it differentiable (second order).

Outer step: TRPO (the port's MAMLTRPO) or a vanilla / PPO-clip surrogate with Adam.
TRPO's Hessian-vector products use that the KL and its gradient vanish at the
old policy, so the KL Hessian through the adaptation θ'_t(θ) is exactly
J_tᵀ F_t J_t (F_t: the KL Hessian in θ'_t); for one inner step J_t = I − α∇²L_t
is symmetric, so both Jacobian products are reverse passes through the inner
step's graph, F_t is a jvp and a vjp of the policy, and nothing of third order
is built (tests check it against the double backward of the KL).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from metafast._validate import finite_number, positive_int
from metafast.functional import flat
from metafast.ops import sgd_update
from metafast.rl import baseline
from metafast.rl.episodes import Episodes, expand_params, rollout
from metafast.rl.gae import discounted_returns, gae, normalize_advantages
from metafast.rl.policies import detach_dist

OUTER = ("trpo", "vanilla", "ppo")


@dataclass
class TaskBatch:
    """Fixed trajectories flattened per task: rows are (step, trajectory) pairs.
    weights = mask / (episode length · trajectories), so Σ weights·x is the port's
    weighted_mean: each trajectory's time-average, then the mean over trajectories."""

    observations: torch.Tensor  # [tasks, N, obs_dim]
    actions: torch.Tensor       # [tasks, N, act_dim] or [tasks, N]
    advantages: torch.Tensor    # [tasks, N], zero on padding
    weights: torch.Tensor       # [tasks, N], zero on padding

    @property
    def tasks(self) -> int:
        return self.observations.shape[0]


def _per_task(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def prepare(episodes: Episodes, gamma: float, gae_lambda: float, normalize: bool = True,
            reg: float = 1e-5) -> TaskBatch:
    """Linear baseline per task, GAE, normalised advantages (the port's create_episodes)."""
    mask = episodes.mask
    feats = baseline.features(episodes.observations, mask)
    returns = discounted_returns(episodes.rewards, mask, gamma)
    values = baseline.predict(baseline.fit(feats, returns, mask, reg), feats)
    adv = gae(episodes.rewards, values, mask, gamma, gae_lambda)
    if normalize:
        adv = normalize_advantages(adv, mask)
    weights = mask / (episodes.lengths.clamp(min=1)[None] * mask.shape[2])
    return TaskBatch(_per_task(episodes.observations), _per_task(episodes.actions), _per_task(adv),
                     _per_task(weights))


# ----------------------------------------------------------------------------- losses
def reinforce_losses(policy, params_t: dict, batch: TaskBatch) -> torch.Tensor:
    """[tasks] inner losses −Σ w·A·log π(a|s) under per-task parameters {name: [tasks, ...]}."""
    logp = policy.log_prob(policy.batched(params_t, batch.observations), batch.actions)
    return -(batch.weights * batch.advantages * logp).sum(-1)


def inner_step(policy, params_t: dict, batch: TaskBatch, lr: float, create_graph: bool = False) -> dict:
    """θ'_t = θ_t − lr·∇L_t(θ_t) for every task. Parameters that do not require grad give
    detached results; with create_graph=False the step is first order (dθ'/dθ = I)."""
    names, values = list(params_t), list(params_t.values())
    with torch.enable_grad():
        leaves = [p if p.requires_grad else p.detach().requires_grad_() for p in values]
        loss = reinforce_losses(policy, dict(zip(names, leaves)), batch).sum()
        grads = torch.autograd.grad(loss, leaves, create_graph=create_graph)
    return dict(zip(names, sgd_update(values, grads, lr, use_kernel=None if values[0].is_cuda else False)))


def surrogate(policy, params_t: dict, batch: TaskBatch, old_logp: torch.Tensor | None = None,
              clip: float | None = None):
    """Per-task surrogate −Σ w·min(ratio·A, clip(ratio)·A) and the distribution.
    old_logp=None: the ratio is 1 with the gradient of the log-likelihood (the old policy is this one)."""
    dist = policy.batched(params_t, batch.observations)
    logp = policy.log_prob(dist, batch.actions)
    ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp))
    term = ratio * batch.advantages
    if clip is not None:
        term = torch.minimum(term, ratio.clamp(1 - clip, 1 + clip) * batch.advantages)
    return -(batch.weights * term).sum(-1), dist


def kl_terms(policy, dist, old, batch: TaskBatch) -> torch.Tensor:
    """[tasks] KL(dist || old), averaged like the surrogate."""
    return (batch.weights * policy.kl(dist, old)).sum(-1)


# ----------------------------------------------------------------------------- TRPO
def unflat(vector: torch.Tensor, like) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vector[i: i + t.numel()].view_as(t))
        i += t.numel()
    return out


def kl_hvp(policy, theta: list, params_t: dict, adapted: dict, valid: TaskBatch, old, damping: float):
    """v ↦ (∇²_θ mean_t KL_t + damping·I) v at the old policy, as J_tᵀ F_t J_t v (module docstring).
    F_t u = D_tᵀ H D_t u with D_t the Jacobian of the distribution parameters on the valid
    observations (a jvp, then a vjp) and H the KL Hessian per row (policy.kl_hessian_product):
    exact because the KL's gradient in the distribution parameters is zero at the old policy.
    ``adapted`` must come from one inner_step of ``params_t`` (or be ``params_t``: no adaptation)."""
    names, p_t, a_t = list(adapted), list(params_t.values()), list(adapted.values())
    leaves = [a.detach().requires_grad_() for a in a_t]
    obs, scale = valid.observations, (valid.weights / valid.tasks).unsqueeze(-1)

    def dist_of(*params):
        return policy.batched(dict(zip(names, params)), obs)

    with torch.enable_grad():
        dist = dist_of(*leaves)
    same = all(a is p for a, p in zip(a_t, p_t))
    primals = tuple(x.detach().contiguous() for x in leaves)

    def product(v: torch.Tensor) -> torch.Tensor:
        v_t = [x.expand_as(p) for x, p in zip(unflat(v, theta), p_t)]
        u = v_t if same else torch.autograd.grad(a_t, p_t, v_t, retain_graph=True)  # J_t v (J_t symmetric)
        with warnings.catch_warnings():  # torch's forward-AD set-up warns about its own use of torch.jit
            warnings.simplefilter("ignore", FutureWarning)
            _, tangent = torch.func.jvp(dist_of, primals, tuple(x.contiguous() for x in u))
        h = [scale * x for x in policy.kl_hessian_product(old, tangent)]
        fu = torch.autograd.grad(dist, leaves, h, retain_graph=True)               # F_t J_t v
        out = torch.autograd.grad(a_t, theta, fu, retain_graph=True)              # Σ_t J_tᵀ F_t J_t v
        return flat(out) + damping * v

    return product


def conjugate_gradient(matvec, b: torch.Tensor, iters: int = 10, residual_tol: float = 1e-10) -> torch.Tensor:
    """The port's conjugate gradient (x0 = 0, stops when rᵀr < residual_tol)."""
    p, r, x = b.clone(), b.clone(), torch.zeros_like(b)
    rdotr = r @ r
    for _ in range(iters):
        z = matvec(p)
        alpha = rdotr / (p @ z)
        x += alpha * p
        r -= alpha * z
        new = r @ r
        p = r + (new / rdotr) * p
        rdotr = new
        if rdotr.item() < residual_tol:
            break
    return x


# ----------------------------------------------------------------------------- configuration
@dataclass
class MetaRLConfig:
    """Defaults: the reference port's 2d-navigation.yaml (and the MAML paper)."""

    trajectories: int = 20          # per task and per sampling (fast-batch-size)
    meta_batch: int = 20
    inner_lr: float = 0.1
    adapt: bool = True              # False: pretraining on all tasks (no inner step)
    first_order: bool = False
    gamma: float = 0.99
    gae_lambda: float = 1.0
    outer: str = "trpo"
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8
    meta_lr: float = 1e-3           # Adam, for outer="vanilla" / "ppo"
    ppo_clip: float = 0.2
    ppo_epochs: int = 5

    def __post_init__(self):
        for name in ("trajectories", "meta_batch", "cg_iters", "ls_max_steps", "ppo_epochs"):
            positive_int(getattr(self, name), f"MetaRLConfig: {name}")
        if self.outer not in OUTER:
            raise ValueError(f"MetaRLConfig: outer must be one of {OUTER}, got {self.outer!r}")
        for name, low, high, low_open in [("inner_lr", 0, None, True), ("gamma", 0, 1, False),
                                          ("gae_lambda", 0, 1, False), ("max_kl", 0, None, True),
                                          ("cg_damping", 0, None, False), ("ls_backtrack_ratio", 0, 1, True),
                                          ("meta_lr", 0, None, True), ("ppo_clip", 0, 1, True)]:
            finite_number(getattr(self, name), f"MetaRLConfig: {name}", low, high, low_open=low_open)
        if self.ls_backtrack_ratio == 1:
            raise ValueError("MetaRLConfig: ls_backtrack_ratio must be below 1")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- the meta-learner
class MetaRL:
    """MAML-RL (or pretraining, adapt=False) of ``policy`` on ``env``'s task distribution."""

    def __init__(self, env, policy, config: MetaRLConfig | None = None):
        self.env, self.policy = env, policy
        self.config = config = MetaRLConfig() if config is None else config
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.meta_lr) if config.outer != "trpo" else None

    def _params(self) -> dict:
        return dict(self.policy.named_parameters())

    def adapt(self, params_t: dict, train: TaskBatch, create_graph: bool) -> dict:
        if not self.config.adapt:
            return params_t
        return inner_step(self.policy, params_t, train, self.config.inner_lr, create_graph)

    def sample(self, goals: torch.Tensor, generator: torch.Generator | None = None):
        """Trajectories of the meta-batch and the differentiable adaptation:
        (train episodes or None, valid episodes, train batch or None, valid batch, params_t, adapted)."""
        c, tasks = self.config, goals.shape[0]
        params_t = expand_params(self._params(), tasks)
        train_eps = train = None
        adapted = params_t
        if c.adapt:
            train_eps = rollout(self.env, self.policy, _detached(params_t), goals, c.trajectories, generator)
            train = prepare(train_eps, c.gamma, c.gae_lambda)
            adapted = self.adapt(params_t, train, create_graph=not c.first_order)
        valid_eps = rollout(self.env, self.policy, _detached(adapted), goals, c.trajectories, generator)
        return train_eps, valid_eps, train, prepare(valid_eps, c.gamma, c.gae_lambda), params_t, adapted

    def step(self, generator: torch.Generator | None = None) -> dict:
        """One meta-iteration: sample goals and trajectories, then one outer update."""
        c, p = self.config, next(self.policy.parameters())
        goals = self.env.sample_goals(c.meta_batch, generator, dtype=p.dtype, device=p.device)
        train_eps, valid_eps, train, valid, params_t, adapted = self.sample(goals, generator)
        logs = self.trpo_step(train, valid, params_t, adapted) if c.outer == "trpo" else \
            self.surrogate_step(train, valid, params_t, adapted)
        logs["valid_return"] = valid_eps.returns.mean().item()
        logs["train_return"] = (train_eps if train_eps is not None else valid_eps).returns.mean().item()
        return logs

    def losses_at(self, theta_vector: torch.Tensor, train, valid, old, old_logp):
        """(mean surrogate, mean KL) with parameters from a flat vector, no graph (the line search)."""
        params = dict(zip(self._params(), unflat(theta_vector, list(self.policy.parameters()))))
        adapted = self.adapt(expand_params(params, valid.tasks), train, create_graph=False)
        with torch.no_grad():
            losses, dist = surrogate(self.policy, adapted, valid, old_logp)
            return losses.mean(), kl_terms(self.policy, dist, old, valid).mean()

    def trpo_step(self, train, valid, params_t, adapted) -> dict:
        c, theta = self.config, list(self.policy.parameters())
        with torch.enable_grad():
            losses, dist = surrogate(self.policy, adapted, valid)
            loss = losses.mean()
            grads = flat(torch.autograd.grad(loss, theta, retain_graph=True))
        old = detach_dist(dist)
        old_logp = self.policy.log_prob(old, valid.actions)
        hvp = kl_hvp(self.policy, theta, params_t, adapted, valid, old, c.cg_damping)
        stepdir = conjugate_gradient(hvp, grads, c.cg_iters)
        shs = 0.5 * (stepdir @ hvp(stepdir))
        logs = {"loss_before": loss.item(), "accepted": False, "step_fraction": 0.0, "kl": 0.0,
                "loss_after": loss.item()}
        if not (torch.isfinite(shs) and shs > 0):
            return logs  # a zero or non-finite direction: no update (the next batch differs)
        step = stepdir / torch.sqrt(shs / c.max_kl)
        start, fraction = flat(theta).detach(), 1.0
        for _ in range(c.ls_max_steps):
            new_loss, kl = self.losses_at(start - fraction * step, train, valid, old, old_logp)
            if (new_loss - loss).item() < 0 and kl.item() < c.max_kl:
                with torch.no_grad():
                    for p, v in zip(theta, unflat(start - fraction * step, theta)):
                        p.copy_(v)
                logs.update(accepted=True, step_fraction=fraction, kl=kl.item(), loss_after=new_loss.item())
                break
            fraction *= c.ls_backtrack_ratio
        return logs

    def surrogate_step(self, train, valid, params_t, adapted) -> dict:
        """Vanilla (one Adam step on the meta-gradient of the surrogate) or PPO-clip
        (ppo_epochs Adam steps on the clipped surrogate, re-adapting each epoch)."""
        c = self.config
        clip, epochs = (c.ppo_clip, c.ppo_epochs) if c.outer == "ppo" else (None, 1)
        old_logp, first = None, None
        for epoch in range(epochs):
            if epoch:
                params_t = expand_params(self._params(), valid.tasks)
                adapted = self.adapt(params_t, train, create_graph=not c.first_order)
            with torch.enable_grad():
                losses, dist = surrogate(self.policy, adapted, valid, old_logp, clip)
                loss = losses.mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if old_logp is None:
                old_logp, first = self.policy.log_prob(detach_dist(dist), valid.actions), loss.item()
            self.optimizer.step()
        return {"loss_before": first, "loss_after": loss.item(), "accepted": True, "step_fraction": 1.0,
                "kl": 0.0}


def _detached(params: dict) -> dict:
    return {n: p.detach() for n, p in params.items()}
