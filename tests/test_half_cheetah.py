"""metafast.rl.half_cheetah: the batched half-cheetah against one plain MuJoCo simulation per
trajectory (MjModel/MjData, mj_step x frame skip), rewards, shapes, errors, MAML-RL and the CLI.
Tests that simulate skip without the `mujoco` extra; the missing-extra errors are tested always."""
import importlib.resources
import json
import sys

import numpy as np
import pytest
import torch

from metafast._optional import MissingExtraError
from metafast.rl import GaussianMLPPolicy, MetaRL, MetaRLConfig, expand_params, rollout
from metafast.rl import half_cheetah as hc

D = torch.float64
SCALE, CTRL_COST, FRAME_SKIP = 10.0, 0.5 * 1e-1, 5  # the reference port's values, written out independently


@pytest.fixture
def mujoco():
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco.batch", reason="needs mujoco >= 4.0 (the `mujoco` extra)")
    import mujoco
    return mujoco


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Oracle:
    """One trajectory as gym's HalfCheetahEnv + the port's wrappers run it: one MjData, the
    policy's action clipped to ±10 and mapped onto ctrlrange, frame_skip calls of mj_step."""

    def __init__(self, mujoco, model, qpos, qvel):
        self.mj, self.m = mujoco, model
        self.d = mujoco.MjData(model)
        self.d.qpos[:], self.d.qvel[:] = qpos, qvel
        mujoco.mj_forward(model, self.d)
        self.contacts = 0

    def obs(self):
        d = self.d
        return np.concatenate([d.qpos[1:], d.qvel, d.body("torso").xpos])

    def step(self, action, task, kind):
        lb, ub = self.m.actuator_ctrlrange[:, 0], self.m.actuator_ctrlrange[:, 1]
        ctrl = np.clip(lb + (np.clip(action, -SCALE, SCALE) + SCALE) * (ub - lb) / (2 * SCALE), lb, ub)
        x_before = self.d.qpos[0]
        self.d.ctrl[:] = ctrl
        for _ in range(FRAME_SKIP):
            self.mj.mj_step(self.m, self.d)
            self.contacts += self.d.ncon
        v = (self.d.qpos[0] - x_before) / (self.m.opt.timestep * FRAME_SKIP)
        forward = -abs(v - task) if kind == "vel" else task * v
        return self.obs(), forward - CTRL_COST * np.sum(ctrl ** 2)


def _model(mujoco):
    path = importlib.resources.files("gymnasium") / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)  # settotalmass's deprecation: no MUJOCO_LOG.TXT here
    try:
        return mujoco.MjModel.from_xml_path(str(path))
    finally:
        mujoco.set_mju_user_warning(previous)


def _env(kind, **kw):
    return (hc.HalfCheetahVel if kind == "vel" else hc.HalfCheetahDir)(threads=1, **kw)


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", ["vel", "dir"])
def test_batched_steps_match_single_mujoco_simulations(mujoco, kind):
    g = _gen(1)
    env, model = _env(kind), _model(mujoco)
    tasks, trajectories = 2, 3
    goals = env.sample_goals(tasks, g, dtype=D)
    state = env.reset(goals, trajectories, g)
    oracles = [[Oracle(mujoco, model, np.r_[state[t, e, 20].item(), state[t, e, :8].numpy()],
                       state[t, e, 8:17].numpy()) for e in range(trajectories)] for t in range(tasks)]
    for t in range(tasks):
        for e in range(trajectories):
            assert np.array_equal(env.observe(state, goals)[t, e].numpy(), oracles[t][e].obs())
    # Bit-identical (mujoco.batch is, to a loop over MjData): a tolerance of 1e-10 would not notice a
    # cold solver start every step (a zero qacc_warmstart moves the states by ~1e-13 per step).
    for _ in range(12):  # the cheetah lands: contacts, so the solver's warm start matters
        action = 6 * torch.randn(tasks, trajectories, 6, generator=g, dtype=D)  # some beyond ±10: clipped
        state, reward, done = env.step(state, action, goals)
        assert not done.any()
        for t in range(tasks):
            for e in range(trajectories):
                obs, r = oracles[t][e].step(action[t, e].numpy(), goals[t].item(), kind)
                assert np.array_equal(state[t, e, :20].numpy(), obs)
                assert np.array_equal(state[t, e, 21:].numpy(), oracles[t][e].d.qacc_warmstart)
                assert state[t, e, 20].item() == oracles[t][e].d.qpos[0]
                assert abs(reward[t, e].item() - r) <= 1e-12
    assert all(o.contacts > 0 for row in oracles for o in row)


def test_step_from_random_states_matches_single_simulation(mujoco):
    g = _gen(2)
    env, model = _env("vel"), _model(mujoco)
    goals = torch.tensor([0.5, 1.5], dtype=D)
    n = 4
    qpos = (0.3 * torch.randn(2, n, 9, generator=g, dtype=D)).numpy()
    qvel = (2.0 * torch.randn(2, n, 9, generator=g, dtype=D)).numpy()
    warm = (torch.randn(2, n, 9, generator=g, dtype=D)).numpy()
    state = torch.from_numpy(np.concatenate([qpos[..., 1:], qvel, np.zeros((2, n, 3)), qpos[..., :1], warm], -1))
    action = 3 * torch.randn(2, n, 6, generator=g, dtype=D)
    nxt, reward, _ = env.step(state, action, goals)
    for t in range(2):
        for e in range(n):
            o = Oracle(mujoco, model, qpos[t, e], qvel[t, e])
            o.d.qacc_warmstart[:] = warm[t, e]
            obs, r = o.step(action[t, e].numpy(), goals[t].item(), "vel")
            assert np.array_equal(nxt[t, e, :20].numpy(), obs) and abs(reward[t, e].item() - r) <= 1e-12


def test_model_loads_without_writing_mujoco_log(mujoco, monkeypatch, tmp_path, recwarn):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hc, "_MODELS", {})  # compile afresh
    env = _env("vel")
    assert env.model.nq == 9 and abs(env.model.body_mass.sum() - 14) < 1e-12 and env.dt == pytest.approx(0.05)
    assert list(tmp_path.iterdir()) == [] and not [w for w in recwarn if "MuJoCo" in str(w.message)]


# ----------------------------------------------------------------------------- rewards and goals
def test_reward_formulas_and_action_mapping(mujoco):
    g = _gen(3)
    vel, direction = _env("vel"), _env("dir")
    speeds, signs = torch.tensor([0.3, 1.7], dtype=D), torch.tensor([1.0, -1.0], dtype=D)
    state = vel.reset(speeds, 5, g)
    action = 8 * torch.randn(2, 5, 6, generator=g, dtype=D)
    action[0, 0] = torch.tensor([20.0, -20.0, 10.0, -10.0, 30.0, -30.0])  # saturated: ctrl ±1 everywhere
    s1, r_vel, _ = vel.step(state, action, speeds)
    s2, r_dir, _ = direction.step(state, action, signs)
    assert torch.equal(s1, s2)  # the task changes the reward only
    v = (s1[..., 20] - state[..., 20]) / 0.05
    ctrl = action.clamp(-10, 10) / 10
    cost = 0.05 * (ctrl ** 2).sum(-1)
    assert torch.allclose(r_vel, -(v - speeds[:, None]).abs() - cost, rtol=0, atol=1e-12)
    assert torch.allclose(r_dir, signs[:, None] * v - cost, rtol=0, atol=1e-12)
    assert abs(cost[0, 0].item() - 0.3) < 1e-15


def test_goal_sampling(mujoco):
    dirs = _env("dir").sample_goals(400, _gen(4), dtype=D)
    assert dirs.shape == (400,) and set(dirs.tolist()) == {-1.0, 1.0} and abs(dirs.mean().item()) < 0.2
    speeds = _env("vel").sample_goals(400, _gen(4), dtype=torch.float32)
    assert speeds.dtype == torch.float32 and speeds.min() >= 0 and speeds.max() <= 2 and speeds.std() > 0.5


# ----------------------------------------------------------------------------- shapes
def test_shapes_dtypes_and_rollout(mujoco):
    g = _gen(5)
    env = _env("vel", max_steps=7)
    goals = env.sample_goals(3, g, dtype=torch.float32)
    state = env.reset(goals, 4, g)
    assert state.shape == (3, 4, env.state_dim) and state.dtype == D
    assert env.observe(state, goals).shape == (3, 4, env.obs_dim) == (3, 4, 20)
    assert env.observe(state, goals).dtype == torch.float32
    _, reward, done = env.step(state, torch.zeros(3, 4, env.act_dim), goals)
    assert reward.shape == done.shape == (3, 4) and reward.dtype == torch.float32 and done.dtype == torch.bool
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, (8,), generator=g)
    params = expand_params({n: p.detach() for n, p in policy.named_parameters()}, 3)
    eps = rollout(env, policy, params, goals, 4, _gen(6))
    again = rollout(env, policy, params, goals, 4, _gen(6))
    assert eps.observations.shape == (7, 3, 4, 20) and eps.actions.shape == (7, 3, 4, 6)
    assert eps.rewards.shape == eps.mask.shape == (7, 3, 4) and eps.observations.dtype == torch.float32
    assert eps.mask.eq(1).all() and eps.lengths.eq(7).all()
    assert torch.equal(eps.observations, again.observations) and torch.equal(eps.rewards, again.rewards)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make", [
    lambda: hc.HalfCheetahVel(low=2.0, high=0.0),
    lambda: hc.HalfCheetahVel(max_steps=0),
    lambda: hc.HalfCheetahDir(frame_skip=0),
    lambda: hc.HalfCheetahDir(action_scale=0.0),
    lambda: hc.HalfCheetahDir(ctrl_cost_weight=float("nan")),
    lambda: hc.HalfCheetahDir(threads=0),
    lambda: hc.HalfCheetahVel().sample_goals(0),
    lambda: hc.HalfCheetahVel().reset(torch.zeros(2, 1), 3),
    lambda: hc.HalfCheetahVel().reset(torch.zeros(2, dtype=torch.long), 3),
    lambda: hc.HalfCheetahVel().reset(torch.zeros(2), 0),
    lambda: hc.HalfCheetahDir().reset(torch.tensor([1.0, 0.5]), 3),
    lambda: hc.HalfCheetahVel().step(torch.zeros(2, 3, 30, dtype=D), torch.zeros(2, 3, 5), torch.zeros(2)),
    lambda: hc.HalfCheetahVel().step(torch.zeros(2, 3, 20, dtype=D), torch.zeros(2, 3, 6), torch.zeros(2)),
    lambda: hc.HalfCheetahVel().step(torch.zeros(3, 3, 30, dtype=D), torch.zeros(3, 3, 6), torch.zeros(2)),
    lambda: hc.HalfCheetahVel().step(torch.zeros(2, 3, 30, dtype=D), torch.full((2, 3, 6), float("nan")),
                                     torch.zeros(2)),
], ids=["range", "steps", "frame-skip", "scale", "cost", "threads", "tasks", "goals-shape", "goals-dtype",
        "trajectories", "directions", "action-shape", "state-shape", "tasks-mismatch", "nan-action"])
def test_bad_arguments_raise_value_error(mujoco, make):
    with pytest.raises(ValueError):
        make()


# ----------------------------------------------------------------------------- MAML-RL
@pytest.mark.parametrize("kind", ["vel", "dir"])
def test_one_meta_iteration_runs(mujoco, kind):
    g = _gen(7)
    env = _env(kind, max_steps=10)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, (8,), generator=g).to(D)
    meta = MetaRL(env, policy, MetaRLConfig(meta_batch=2, trajectories=2))
    start = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])
    logs = meta.step(g)
    now = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])
    numbers = [v for v in logs.values() if isinstance(v, float)]
    assert numbers and all(np.isfinite(numbers)) and torch.isfinite(now).all()
    assert logs["accepted"] == bool((now - start).norm() > 0)


# ----------------------------------------------------------------------------- command line
TINY = ["--meta-batch", "2", "--trajectories", "2", "--hidden", "8", "--max-steps", "5", "--dtype", "float64",
        "--quiet"]


@pytest.mark.parametrize("missing", ["mujoco", "gymnasium"])
def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys, missing):
    from metafast.rl.cli import main_train
    if missing == "gymnasium":  # reached only once mujoco imports
        pytest.importorskip("mujoco.batch")
    monkeypatch.setitem(sys.modules, missing, None)  # `import mujoco` now raises ModuleNotFoundError
    with pytest.raises(MissingExtraError, match=r"pip install 'metafast\[mujoco\]'"):
        hc.HalfCheetahVel()
    out = tmp_path / "run"
    assert main_train(TINY + ["--out", str(out)], env="half-cheetah-dir") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and missing in err and "pip install 'metafast[mujoco]'" in err
    assert not out.exists()


def test_cli_train_resume_and_eval(mujoco, tmp_path, capsys):
    for module in ("matplotlib", "tqdm", "PIL"):  # python -m metafast checks the whole `cli` extra
        pytest.importorskip(module)
    from metafast.__main__ import main
    from metafast.rl.cli import is_rl_checkpoint

    run = tmp_path / "dir"
    args = TINY + ["--eval-tasks", "2", "--eval-steps", "1", "--out", str(run)]
    assert main(["train", "half-cheetah-dir", *args, "--iterations", "1"]) == 0
    assert main(["train", "half-cheetah-dir", *args, "--iterations", "2", "--resume"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 2 and state["args"]["env"] == "half-cheetah-dir" and is_rl_checkpoint(str(run))
    assert state["policy"]["mean.0.weight"].shape == (8, 20)
    results = json.loads((run / "results.json").read_text())
    assert set(results["evaluation"]["returns"]) == {"maml", "random"} and not (run / "trajectories.png").exists()
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--tasks", "2", "--steps", "1", "--trajectories", "2", "--json", str(out),
                 "--quiet"]) == 0
    assert all(len(r["mean"]) == 2 for r in json.loads(out.read_text())["returns"].values())
    capsys.readouterr()
    assert main(["train", "half-cheetah-vel", *args, "--iterations", "3", "--resume"]) == 1
    assert "is a `train half-cheetah-dir` run" in capsys.readouterr().err
