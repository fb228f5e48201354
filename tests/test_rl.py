"""metafast.rl: the batched MAML-RL paths against per-task eager oracles (float64)."""
import json

import pytest
import torch

from metafast.rl import (CategoricalMLPPolicy, GaussianMLPPolicy, MetaRL, MetaRLConfig, Navigation2D, TaskBatch,
                         adaptation_returns, baseline, discounted_returns, expand_params, gae, inner_step, kl_hvp,
                         normalize_advantages, prepare, rollout, surrogate)
from metafast.rl import reference as ref
from metafast.rl.maml_rl import conjugate_gradient, flat

from helpers import rel_err

TOL = 1e-10
D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _policy(kind, g):
    if kind == "gaussian":
        policy = GaussianMLPPolicy(2, 2, (8, 8), "relu", init_std=0.7, generator=g)
    else:
        policy = CategoricalMLPPolicy(2, 3, (8, 8), "tanh", generator=g)
    policy = policy.to(D)
    with torch.no_grad():  # away from the zero-bias initialisation, so every term is exercised
        for p in policy.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=D))
    return policy


def _batch(kind, g, tasks=3, rows=15):
    obs = torch.randn(tasks, rows, 2, generator=g, dtype=D)
    act = (torch.randint(0, 3, (tasks, rows), generator=g) if kind == "categorical"
           else torch.randn(tasks, rows, 2, generator=g, dtype=D))
    return TaskBatch(obs, act, torch.randn(tasks, rows, generator=g, dtype=D),
                     torch.rand(tasks, rows, generator=g, dtype=D) / rows)


def _episodes(g, tasks=3, trajectories=4, max_steps=12, policy=None):
    env = Navigation2D(max_steps=max_steps, tolerance=0.05)  # a loose goal box, so some episodes end early
    policy = policy or GaussianMLPPolicy(2, 2, (8,), generator=g, init_std=0.05).to(D)
    goals = 0.1 * torch.randn(tasks, 2, generator=g, dtype=D)
    params = expand_params({n: p.detach() for n, p in policy.named_parameters()}, tasks)
    return env, goals, rollout(env, policy, params, goals, trajectories, g)


# ----------------------------------------------------------------------------- environment and sampling
def test_env_step_matches_scalar_reference():
    g = _gen(1)
    env = Navigation2D()
    goals = env.sample_goals(3, g, dtype=D)
    goals[0] = torch.tensor([0.05, -0.05], dtype=D)  # reached in one step by the action below
    state = env.reset(goals, 4)
    scalar = [[ref.NavigationTask(goals[t].numpy()) for _ in range(4)] for t in range(3)]
    for step in range(5):
        action = 0.15 * torch.randn(3, 4, 2, generator=g, dtype=D)  # many clipped
        if step == 0:
            action[0, 0] = torch.tensor([0.05, -0.05], dtype=D)
        state, reward, done = env.step(state, action, goals)
        for t in range(3):
            for e in range(4):
                s, r, d = scalar[t][e].step(action[t, e].numpy())
                assert torch.allclose(state[t, e], torch.from_numpy(s), rtol=0, atol=1e-15)
                assert abs(reward[t, e].item() - r) <= 1e-15 and done[t, e].item() == d
        if step == 0:
            assert done[0, 0]


def test_rollout_replays_on_scalar_reference():
    g = _gen(2)
    env, goals, eps = _episodes(g)
    lengths = eps.lengths
    assert (lengths < env.max_steps).any() and (lengths == eps.mask.shape[0]).any()  # both kinds of ending
    for t in range(goals.shape[0]):
        for e in range(eps.mask.shape[2]):
            task = ref.NavigationTask(goals[t].numpy(), tolerance=0.05)
            obs, n = task.reset(), int(lengths[t, e])
            for h in range(n):
                assert torch.allclose(eps.observations[h, t, e], torch.from_numpy(obs), rtol=0, atol=1e-15)
                obs, r, done = task.step(eps.actions[h, t, e].numpy())
                assert abs(eps.rewards[h, t, e].item() - r) <= 1e-15
                assert done == (h == n - 1) or (not done and n == env.max_steps)
            assert eps.mask[:n, t, e].eq(1).all() and eps.mask[n:, t, e].eq(0).all()
            assert eps.rewards[n:, t, e].eq(0).all() and eps.observations[n:, t, e].eq(0).all()


# ----------------------------------------------------------------------------- returns, GAE, baseline
def test_returns_gae_normalisation_and_baseline_match_loops():
    g = _gen(3)
    _, _, eps = _episodes(g)
    gamma, lam = 0.9, 0.8
    returns = discounted_returns(eps.rewards, eps.mask, gamma)
    feats = baseline.features(eps.observations, eps.mask)
    weights = baseline.fit(feats, returns, eps.mask)
    values = baseline.predict(weights, feats)
    adv = gae(eps.rewards, values, eps.mask, gamma, lam)
    norm = normalize_advantages(adv, eps.mask)
    batch = prepare(eps, gamma, lam)
    for t in range(eps.mask.shape[1]):
        lengths = eps.lengths[t].long()
        r = ref.discounted_returns(eps.rewards[:, t], lengths, gamma)
        assert rel_err(returns[:, t], r) < TOL
        w = ref.fit_baseline(eps.observations[:, t], r, lengths)
        assert rel_err(weights[t], w) < 1e-8  # two solves of one ill-conditioned 8x8 system
        a = ref.gae(eps.rewards[:, t], values[:, t], lengths, gamma, lam)
        assert rel_err(adv[:, t], a) < TOL
        assert rel_err(norm[:, t], ref.normalize(a, lengths)) < TOL
        assert rel_err(batch.advantages[t], norm[:, t].reshape(-1)) < TOL


# ----------------------------------------------------------------------------- MAML-RL exactness
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_inner_step_matches_per_task(kind):
    g = _gen(4)
    policy, train = _policy(kind, g), _batch(kind, g)
    params = dict(policy.named_parameters())
    adapted = inner_step(policy, expand_params(params, train.tasks), train, 0.3, create_graph=True)
    for t in range(train.tasks):
        oracle = ref.adapt_task(policy, params, train, t, 0.3)
        assert max(rel_err(adapted[n][t], oracle[n]) for n in params) < TOL
        assert rel_err(adapted["log_std" if kind == "gaussian" else "logits.0.bias"][t],
                       params["log_std" if kind == "gaussian" else "logits.0.bias"]) > 1e-6  # it moved


def _batched_terms(policy, train, valid, lr, first_order, adapt):
    params_t = expand_params(dict(policy.named_parameters()), valid.tasks)
    adapted = inner_step(policy, params_t, train, lr, create_graph=not first_order) if adapt else params_t
    losses, dist = surrogate(policy, adapted, valid)
    return params_t, adapted, losses.mean(), dist


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("order", ["second", "first", "no-adaptation"])
def test_meta_gradient_and_trpo_hvp_match_per_task(kind, order):
    g = _gen(5)
    policy, train, valid = _policy(kind, g), _batch(kind, g), _batch(kind, g)
    first_order, adapt = order == "first", order != "no-adaptation"
    theta = list(policy.parameters())
    params_t, adapted, loss, dist = _batched_terms(policy, train, valid, 0.3, first_order, adapt)
    grad = flat(torch.autograd.grad(loss, theta, retain_graph=True))
    oracle_loss, _, _ = ref.surrogate_and_kl(policy, train, valid, 0.3, first_order, adapt)
    oracle_grad = flat(torch.autograd.grad(oracle_loss, theta))
    assert rel_err(grad, oracle_grad) < TOL
    hvp = kl_hvp(policy, theta, params_t, adapted, valid, tuple(x.detach() for x in dist), damping=0.0)
    for _ in range(2):
        v = torch.randn(grad.shape, generator=g, dtype=D)
        assert rel_err(hvp(v), ref.kl_hvp(policy, train, valid, 0.3, v, first_order, adapt)) < TOL
    if adapt:  # the orders differ, so the test can tell them apart
        other, _, _ = ref.surrogate_and_kl(policy, train, valid, 0.3, not first_order, adapt)
        assert rel_err(grad, flat(torch.autograd.grad(other, theta))) > 1e-6


def test_conjugate_gradient_solves_spd_system():
    g = _gen(6)
    m = torch.randn(6, 6, generator=g, dtype=D)
    a, b = m @ m.T + 6 * torch.eye(6, dtype=D), torch.randn(6, generator=g, dtype=D)
    assert rel_err(conjugate_gradient(lambda v: a @ v, b, iters=6, residual_tol=0.0),
                   torch.linalg.solve(a, b)) < 1e-8


def test_trpo_step_decreases_surrogate_within_trust_region():
    g = _gen(7)
    policy, train, valid = _policy("gaussian", g), _batch("gaussian", g), _batch("gaussian", g)
    meta = MetaRL(Navigation2D(), policy, MetaRLConfig(inner_lr=0.3, max_kl=1e-3))
    before, _, olds = ref.surrogate_and_kl(policy, train, valid, 0.3)
    params_t, adapted, _, _ = _batched_terms(policy, train, valid, 0.3, False, True)
    start = flat(policy.parameters()).detach().clone()
    logs = meta.trpo_step(train, valid, params_t, adapted)
    after, kl, _ = ref.surrogate_and_kl(policy, train, valid, 0.3, old=olds)
    assert logs["accepted"] and (flat(policy.parameters()) - start).norm() > 0
    assert after.item() < before.item() and 0 < kl.item() < 1e-3
    assert abs(after.item() - logs["loss_after"]) < 1e-12 and abs(kl.item() - logs["kl"]) < 1e-12


@pytest.mark.parametrize("outer", ["trpo", "vanilla", "ppo"])
def test_meta_iteration_updates_policy(outer):
    g = _gen(8)
    env = Navigation2D(max_steps=10)
    policy = GaussianMLPPolicy(2, 2, (8,), generator=g).to(D)
    meta = MetaRL(env, policy, MetaRLConfig(meta_batch=3, trajectories=4, outer=outer, first_order=outer == "ppo",
                                            ppo_epochs=2))
    start = flat(policy.parameters()).detach().clone()
    logs = meta.step(g)
    moved = (flat(policy.parameters()) - start).norm().item()
    assert moved > 0 and torch.isfinite(flat(policy.parameters())).all()
    assert logs["valid_return"] < 0 and logs["train_return"] < 0


def test_adaptation_returns_shapes_and_determinism():
    env = Navigation2D(max_steps=8)
    policy = GaussianMLPPolicy(2, 2, (8,), generator=_gen(9)).to(D)
    goals = env.sample_goals(4, _gen(10), dtype=D)
    r1, eps = adaptation_returns(env, policy, goals, steps=2, trajectories=3, generator=_gen(11))
    r2, _ = adaptation_returns(env, policy, goals, steps=2, trajectories=3, generator=_gen(11))
    assert r1.shape == (3, 4) and len(eps) == 3 and torch.equal(r1, r2)
    assert not torch.equal(r1[0], r1[1])  # the step changed the policy


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make", [
    lambda: Navigation2D(low=0.5, high=-0.5),
    lambda: Navigation2D(max_steps=0),
    lambda: Navigation2D().sample_goals(0),
    lambda: Navigation2D().reset(torch.zeros(3, 3), 2),
    lambda: Navigation2D().step(torch.zeros(2, 3, 2), torch.zeros(2, 4, 2), torch.zeros(2, 2)),
    lambda: GaussianMLPPolicy(2, 0),
    lambda: GaussianMLPPolicy(2, 2, init_std=-1.0),
    lambda: MetaRLConfig(inner_lr=-0.1),
    lambda: MetaRLConfig(outer="sgd"),
    lambda: MetaRLConfig(gamma=1.5),
    lambda: MetaRLConfig(trajectories=0),
    lambda: MetaRLConfig(ls_backtrack_ratio=1.0),
    lambda: gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2), gamma=0.99, gae_lambda=2.0),
    lambda: gae(torch.zeros(3, 2), torch.zeros(4, 2), torch.ones(3, 2), gamma=0.99, gae_lambda=1.0),
    lambda: baseline.fit(torch.zeros(3, 2, 2, 8), torch.zeros(3, 2, 2), torch.ones(3, 2, 2), reg=0.0),
    lambda: GaussianMLPPolicy(2, 2).batched({n: p.expand(2, *p.shape) for n, p in
                                             GaussianMLPPolicy(2, 2).named_parameters()}, torch.zeros(3, 4, 2)),
    lambda: adaptation_returns(Navigation2D(), GaussianMLPPolicy(2, 2), torch.zeros(2, 2), steps=-1),
    lambda: adaptation_returns(Navigation2D(), GaussianMLPPolicy(2, 2), torch.zeros(2, 2), later_lr=0.0),
], ids=["env-range", "env-steps", "goals-count", "goals-shape", "step-shapes", "policy-size", "policy-std",
        "inner-lr", "outer", "gamma", "trajectories", "backtrack", "gae-lambda", "gae-shapes", "ridge",
        "batched-tasks", "eval-steps", "eval-later-lr"])
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


# ----------------------------------------------------------------------------- command line
TINY = ["--meta-batch", "2", "--trajectories", "3", "--hidden", "8", "--max-steps", "6", "--dtype", "float64",
        "--quiet"]


def test_cli_train_resume_is_bit_identical_and_eval(tmp_path, capsys):
    for module in ("matplotlib", "tqdm", "PIL"):  # python -m metafast checks the whole `cli` extra
        pytest.importorskip(module)
    from metafast.__main__ import main
    from metafast.rl.cli import is_rl_checkpoint, main_eval, main_train

    full, split = tmp_path / "full", tmp_path / "split"
    assert main_train(TINY + ["--iterations", "2", "--eval-tasks", "3", "--out", str(full)]) == 0
    assert main_train(TINY + ["--iterations", "1", "--eval-tasks", "0", "--out", str(split)]) == 0
    assert main_train(TINY + ["--iterations", "2", "--eval-tasks", "0", "--out", str(split), "--resume"]) == 0
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (full, split))
    assert a["iteration"] == b["iteration"] == 2
    assert all(torch.equal(a["policy"][k], b["policy"][k]) for k in a["policy"])
    results = json.loads((full / "results.json").read_text())
    assert len(results["history"]) == 2 and set(results["evaluation"]["returns"]) == {"maml", "random"}
    assert (full / "returns.png").stat().st_size > 0 and (full / "trajectories.png").stat().st_size > 0
    assert is_rl_checkpoint(str(full)) and not is_rl_checkpoint(str(tmp_path / "missing"))

    # through `python -m metafast`: train navigation and eval of an RL checkpoint dispatch here
    assert main(["train", "navigation", *TINY, "--iterations", "1", "--pretrain", "--eval-tasks", "0", "--out",
                 str(tmp_path / "pre")]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(full), "--baseline", str(tmp_path / "pre"), "--tasks", "3", "--steps", "1",
                 "--json", str(out), "--quiet"]) == 0
    table = json.loads(out.read_text())["returns"]
    assert set(table) == {"maml", "pretrained", "random"} and all(len(r["mean"]) == 2 for r in table.values())
    capsys.readouterr()
    assert main_train(TINY + ["--iterations", "1", "--out", str(full)]) == 1  # exists without --resume
    assert main_train(TINY + ["--inner-lr", "-1", "--out", str(tmp_path / "bad")]) == 1
    assert main_eval([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--inner-lr must be" in err and "no checkpoint" in err
