"""Cost of one MAML-RL meta-iteration on 2D navigation: metafast.rl (batched over
tasks) vs a per-task loop written the way tristandeleu/pytorch-maml-rl does it.

One iteration = sample 20 goals; for each task sample 20 trajectories, fit the
linear baseline, GAE, one inner policy-gradient step, sample 20 trajectories with
the adapted policy; then one TRPO step (meta-gradient, 10 conjugate-gradient
iterations of KL Hessian-vector products, backtracking line search). Setup: the
port's 2d-navigation.yaml (Gaussian MLP 64-64 tanh, alpha 0.1, max KL 0.01,
damping 1e-5, 15 line-search steps of 0.8), second order, float32.

Variants:
  per-task   one task at a time, as the port: a scalar environment per trajectory
             stepped in a Python loop (gym's SyncVectorEnv), the policy on the
             trajectories still running, Python loops for returns and GAE, the
             baseline solved per task, per-task adaptation with autograd.grad
             (create_graph=True) and TRPO's Hessian-vector product as the double
             backward of the summed per-task KLs (metafast.rl.reference)
  batched    metafast.rl.MetaRL.step: every trajectory of every task at once

Usage: python benchmarks/bench_rl.py [--iterations 3] [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.func import functional_call

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.import_metafast()
from metafast.rl import GaussianMLPPolicy, MetaRL, MetaRLConfig, Navigation2D, TaskBatch  # noqa: E402
from metafast.rl import reference as ref  # noqa: E402
from metafast.rl.maml_rl import conjugate_gradient, flat, unflat  # noqa: E402


# --------------------------------------------------------------------------- the port's way, one task at a time
def sample_task(policy, params, goal, trajectories, max_steps, generator) -> TaskBatch:
    """The port's SamplerWorker.create_episodes for one task (float32 like BatchEpisodes)."""
    envs = [ref.NavigationTask(goal) for _ in range(trajectories)]
    obs = np.stack([e.reset() for e in envs])
    alive = list(range(trajectories))
    rows = [[] for _ in range(trajectories)]
    with torch.no_grad():
        for _ in range(max_steps):
            x = torch.from_numpy(obs[alive]).float()
            dist = policy(x) if params is None else functional_call(policy, params, (x,))
            actions = policy.sample(dist, generator).numpy()
            for j, i in enumerate(alive):
                new_obs, reward, done = envs[i].step(actions[j])
                rows[i].append((obs[i].copy(), actions[j], reward))
                obs[i] = new_obs
                if done:
                    alive[j] = None
            alive = [i for i in alive if i is not None]
            if not alive:
                break
    horizon = max(len(r) for r in rows)
    o = torch.zeros(horizon, trajectories, 2)
    a = torch.zeros(horizon, trajectories, 2)
    r = torch.zeros(horizon, trajectories)
    for i, traj in enumerate(rows):
        for t, (ob, ac, rew) in enumerate(traj):
            o[t, i], a[t, i], r[t, i] = torch.from_numpy(ob), torch.from_numpy(ac), float(rew)
    lengths = torch.tensor([len(x) for x in rows])
    returns = ref.discounted_returns(r, lengths, 0.99)
    w = ref.fit_baseline(o, returns, lengths).float()
    t_idx = torch.arange(horizon, dtype=torch.float32)[:, None, None] / 100
    mask = (torch.arange(horizon)[:, None] < lengths[None]).float()
    feats = torch.cat([o, o ** 2, t_idx.expand(-1, trajectories, 1), t_idx.expand(-1, trajectories, 1) ** 2,
                       t_idx.expand(-1, trajectories, 1) ** 3, torch.ones(horizon, trajectories, 1)], -1)
    values = (feats * mask[..., None]) @ w
    adv = ref.normalize(ref.gae(r, values, lengths, 0.99, 1.0), lengths)
    weights = mask / (lengths[None].float() * trajectories)
    flat_rows = lambda x: x.reshape(1, -1, *x.shape[2:])  # noqa: E731
    return TaskBatch(flat_rows(o), flat_rows(a), flat_rows(adv), flat_rows(weights))


def per_task_iteration(policy, env, cfg: MetaRLConfig, generator) -> dict:
    goals = env.sample_goals(cfg.meta_batch, generator).double().numpy()
    theta = dict(policy.named_parameters())
    pairs = []
    for goal in goals:
        train = sample_task(policy, None, goal, cfg.trajectories, env.max_steps, generator)
        adapted = ref.adapt_task(policy, theta, train, 0, cfg.inner_lr, first_order=True)
        adapted = {n: p.detach() for n, p in adapted.items()}
        pairs.append((train, sample_task(policy, adapted, goal, cfg.trajectories, env.max_steps, generator)))

    def surrogate(first_order, olds=None):
        losses, kls, new_olds = [], [], []
        for i, (train, valid) in enumerate(pairs):
            loss, kl, old = ref.surrogate_and_kl(policy, train, valid, cfg.inner_lr, first_order,
                                                 old=None if olds is None else [olds[i]])
            losses.append(loss), kls.append(kl), new_olds.append(old[0])
        return sum(losses) / len(pairs), sum(kls) / len(pairs), new_olds

    params = list(policy.parameters())
    old_loss, old_kl, olds = surrogate(cfg.first_order)
    grads = flat(torch.autograd.grad(old_loss, params, retain_graph=True))
    grad_kl = flat(torch.autograd.grad(old_kl, params, create_graph=True))

    def hvp(v, retain=True):
        return flat(torch.autograd.grad(grad_kl @ v, params, retain_graph=retain)) + cfg.cg_damping * v

    stepdir = conjugate_gradient(hvp, grads, cfg.cg_iters)
    shs = 0.5 * (stepdir @ hvp(stepdir, retain=False))
    step = stepdir / torch.sqrt(shs / cfg.max_kl)
    start, fraction, searched = flat(params).detach(), 1.0, 0
    for _ in range(cfg.ls_max_steps):
        searched += 1
        with torch.no_grad():
            for p, v in zip(params, unflat(start - fraction * step, params)):
                p.copy_(v)
        loss, kl, _ = surrogate(True, olds)
        if (loss - old_loss).item() < 0 and kl.item() < cfg.max_kl:
            break
        fraction *= cfg.ls_backtrack_ratio
    else:
        with torch.no_grad():
            for p, v in zip(params, unflat(start, params)):
                p.copy_(v)
    return {"line_search_evaluations": searched}


# --------------------------------------------------------------------------- timing
def timed(fn, repeats):
    times, extra = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        extra.append(fn())
        common.synchronize(DEVICE)
        times.append(time.perf_counter() - t0)
    return times, extra


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=3, help="timed meta-iterations per variant (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="device of the batched variant (the per-task loop is CPU)")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/rl_<device>_<date>.json)")
    a = p.parse_args(argv)
    global DEVICE
    DEVICE = common.resolve_device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    cfg, env = MetaRLConfig(), Navigation2D()

    def fresh_policy(device):
        return GaussianMLPPolicy(2, 2, (64, 64), "tanh", generator=torch.Generator().manual_seed(0)).to(device)

    rows = {}
    policy = fresh_policy("cpu")
    gen = torch.Generator().manual_seed(1)
    per_task_iteration(policy, env, cfg, gen)  # warm-up
    times, extra = timed(lambda: per_task_iteration(policy, env, cfg, gen), a.iterations)
    rows["per-task"] = {"device": "cpu", "times_s": times, "median_s": statistics.median(times),
                        "line_search_evaluations": [e["line_search_evaluations"] for e in extra]}
    meta = MetaRL(env, fresh_policy(DEVICE), cfg)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    meta.step(gen)
    times, extra = timed(lambda: meta.step(gen), a.iterations)
    rows["batched"] = {"device": str(DEVICE), "times_s": times, "median_s": statistics.median(times),
                       "line_search_accepted_fraction": [e["step_fraction"] for e in extra]}
    ratio = rows["per-task"]["median_s"] / rows["batched"]["median_s"]

    print(f"one MAML-RL meta-iteration, 2D navigation, {cfg.meta_batch} tasks x {cfg.trajectories} trajectories, "
          f"64-64 tanh, TRPO, second order; {common.device_name(DEVICE)}, {threads} threads, "
          f"median of {a.iterations}")
    for name, r in rows.items():
        print(f"  {name:<9} {r['device']:<5} {r['median_s']:8.2f} s   ({', '.join(f'{t:.2f}' for t in r['times_s'])})")
    print(f"  per-task / batched = {ratio:.1f}x")
    out = a.out or common.default_out_path("rl", DEVICE)
    common.write_json(out, {"benchmark": "maml-rl navigation meta-iteration", "config": cfg.to_dict(),
                            "policy": "GaussianMLPPolicy 2-64-64-2 tanh, float32", "iterations": a.iterations,
                            "rows": rows, "ratio_per_task_over_batched": ratio,
                            "environment": common.environment(DEVICE, threads)})
    print(f"wrote {out}")
    return 0


DEVICE = torch.device("cpu")

if __name__ == "__main__":
    sys.exit(main())
