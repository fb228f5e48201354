"""The MAML paper's half-cheetah tasks (HalfCheetahVel, HalfCheetahDir), every trajectory of
every task simulated at once with MuJoCo. Needs the ``mujoco`` extra (mujoco >= 4.0, gymnasium).

Facts carried over from the reference port (tristandeleu/pytorch-maml-rl,
maml_rl/envs/mujoco/half_cheetah.py, envs/utils/wrappers.py and normalized_env.py,
configs/maml/halfcheetah-{vel,dir}.yaml) and its gym HalfCheetah base:

- the model is gym's half_cheetah.xml (9 positions, 9 velocities, 6 motors with ctrlrange
  [-1, 1], timestep 0.01), read at run time from the installed gymnasium package;
- one environment step is ``frame_skip`` = 5 calls of mj_step, so dt = 0.05;
- the policy's action is clipped to [-action_scale, action_scale] (normalization_scale 10 in the
  configs) and mapped linearly onto the motors' ctrlrange (the port's NormalizedActionWrapper);
- the observation (20 numbers) is qpos[1:], qvel and the torso's body-frame position
  (``get_body_com("torso")``, i.e. xpos, which after mj_step describes the state before the last
  substep);
- reward: forward velocity v = Δqpos[0] / dt; HalfCheetahVel: −|v − goal| − 0.5·1e-1·Σctrl²,
  HalfCheetahDir: direction·v − 0.5·1e-1·Σctrl² (ctrl: the mapped action);
- reset: qpos = qpos0 + U(−0.1, 0.1), qvel = 0.1·N(0, 1), zero solver warm start;
- goals: velocity U[0, 2] per task (Vel), direction ±1 with probability 1/2 (Dir);
- episodes of ``max_steps`` steps (max_episode_steps: 100 in both configs; the port's wrapper
  defaults to 200 when it is not given, and the MAML paper used a horizon of 200), never ending
  early.

The state tensor is [tasks, trajectories, STATE_DIM] in float64: the observation (first 20 entries),
then qpos[0] and the solver's warm start qacc_warmstart, so that ``step`` is a pure function of its
arguments and continues the simulation bit for bit; ``observe`` returns the policy's view (the first
20 entries, in the goals' dtype).
"""
from __future__ import annotations

import importlib.resources
import warnings

import numpy as np
import torch

from metafast._optional import MissingExtraError, require
from metafast._validate import finite_number, positive_int

__all__ = ["HalfCheetahDir", "HalfCheetahVel"]

_PURPOSE = "the half-cheetah environment"
_NQ, _NV, _NU = 9, 9, 6
OBS_DIM = (_NQ - 1) + _NV + 3           # qpos[1:], qvel, torso xpos
STATE_DIM = OBS_DIM + 1 + _NV           # ... then qpos[0] and qacc_warmstart
_QPOS0, _WARM = OBS_DIM, OBS_DIM + 1    # offsets of qpos[0] and qacc_warmstart in the state


def _mujoco():
    """(mujoco, mujoco.batch), or MissingExtraError naming the `mujoco` extra."""
    mujoco = require("mujoco", _PURPOSE, extra="mujoco")
    try:
        from mujoco import batch
    except ImportError:
        raise MissingExtraError(f"{_PURPOSE} needs mujoco >= 4.0 (mujoco.batch), found mujoco "
                                f"{getattr(mujoco, '__version__', '?')}: pip install -U 'metafast[mujoco]'") from None
    return mujoco, batch


def model_xml_path() -> str:
    """Path of gym's half_cheetah.xml inside the installed gymnasium package."""
    require("gymnasium", _PURPOSE, extra="mujoco")
    path = importlib.resources.files("gymnasium") / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
    if not path.is_file():
        raise MissingExtraError(f"{_PURPOSE} needs gymnasium's envs/mujoco/assets/half_cheetah.xml, which this "
                                f"gymnasium install lacks: pip install -U 'metafast[mujoco]'")
    return str(path)


_MODELS: dict = {}


_SETTOTALMASS = "compiler attribute 'settotalmass' is deprecated"


def _model(mujoco):
    """The compiled model, once per process; environments share it read-only (a Batch simulates a
    copy). MuJoCo 4 warns that gym's XML uses the deprecated compiler attribute settotalmass (the
    masses are still scaled to 14): its default handler prints that to stderr and appends it to
    MUJOCO_LOG.TXT in the working directory, so the compilation runs with a handler of ours that
    drops that one message and passes any other on as a Python warning."""
    path = model_xml_path()
    if path not in _MODELS:
        messages: list[str] = []
        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(messages.append)
        try:
            _MODELS[path] = mujoco.MjModel.from_xml_path(path)
        finally:
            mujoco.set_mju_user_warning(previous)
        for message in messages:
            if _SETTOTALMASS not in message:
                warnings.warn(f"MuJoCo, compiling {path}: {message}", RuntimeWarning, stacklevel=3)
    return _MODELS[path]


class _HalfCheetah:
    obs_dim = OBS_DIM
    act_dim = _NU
    state_dim = STATE_DIM

    def __init__(self, max_steps: int = 100, frame_skip: int = 5, action_scale: float = 10.0,
                 ctrl_cost_weight: float = 0.5 * 1e-1, reset_noise_scale: float = 0.1, threads: int | None = None):
        cls = type(self).__name__
        self.max_steps = positive_int(max_steps, f"{cls}: max_steps")
        self.frame_skip = positive_int(frame_skip, f"{cls}: frame_skip")
        self.action_scale = finite_number(action_scale, f"{cls}: action_scale", 0.0, low_open=True)
        self.ctrl_cost_weight = finite_number(ctrl_cost_weight, f"{cls}: ctrl_cost_weight", 0.0)
        self.reset_noise_scale = finite_number(reset_noise_scale, f"{cls}: reset_noise_scale", 0.0)
        self.threads = None if threads is None else positive_int(threads, f"{cls}: threads")
        self._mj, self._mjbatch = _mujoco()
        self.model = _model(self._mj)
        m = self.model
        if (m.nq, m.nv, m.nu) != (_NQ, _NV, _NU) or m.body("torso").id != 1:
            raise RuntimeError(f"{cls}: half_cheetah.xml has changed (nq={m.nq}, nv={m.nv}, nu={m.nu}); "
                               f"expected nq={_NQ}, nv={_NV}, nu={_NU} with the torso as body 1")
        self.dt = m.opt.timestep * self.frame_skip
        self._ctrl_low, self._ctrl_high = m.actuator_ctrlrange[:, 0].copy(), m.actuator_ctrlrange[:, 1].copy()
        self._batches: dict[int, object] = {}

    # ------------------------------------------------------------------ simulation
    def _batch(self, nsim: int):
        """A mujoco.batch.Batch of nsim simulations, one per (task, trajectory), cached by size.

        Stepping uses mujoco.batch (new in mujoco 4.0) rather than mujoco.rollout: both step
        many simulations on a C++ thread pool (rollout is no faster here: ~19 ms per step of
        800 simulations on one core, either way), but rollout always starts from a zero solver
        warm start and never returns the final one, so restarting it every environment step
        drifts from one continuous simulation (~1e-8 in qpos after 100 steps), and it does not
        give the torso position the observation needs. A Batch keeps each simulation's whole
        integration state (warm start included) in a row, computes xpos as mj_step does, and
        is bit-identical to a loop over one MjData per simulation."""
        batch = self._batches.get(nsim)
        if batch is None:
            threads = torch.get_num_threads() if self.threads is None else self.threads
            batch = self._mjbatch.Batch(self.model, nsim=nsim, nthread=threads)
            batch.reset(stage=self._mj.mjtStage.mjSTAGE_NONE)  # default rows: no applied forces
            batch.bind("xpos")  # registered before any call, so that calls refresh it
            if len(self._batches) >= 4:  # sizes seen: train/valid and evaluation, typically
                self._batches.pop(next(iter(self._batches)))
            self._batches[nsim] = batch
        return batch

    def _ctrl(self, action: np.ndarray) -> np.ndarray:
        """The port's NormalizedActionWrapper: clip to ±scale, map onto ctrlrange, clip."""
        s, lb, ub = self.action_scale, self._ctrl_low, self._ctrl_high
        a = np.clip(action, -s, s)
        return np.clip(lb + (a + s) * (ub - lb) / (2 * s), lb, ub)

    @staticmethod
    def _to_state(qpos, qvel, warm, xpos, like: torch.Tensor) -> torch.Tensor:
        out = np.concatenate([qpos[:, 1:], qvel, xpos, qpos[:, :1], warm], axis=1)
        return torch.from_numpy(out).to(like.device).reshape(*like.shape[:2], STATE_DIM)

    # ------------------------------------------------------------------ the environment interface
    def reset(self, goals: torch.Tensor, trajectories: int, generator: torch.Generator | None = None
              ) -> torch.Tensor:
        """Initial states [tasks, trajectories, STATE_DIM] (float64, on the goals' device): qpos0 plus
        U(−noise, noise), velocities noise·N(0, 1), drawn from ``generator`` (on the goals' device)."""
        self._check_goals(goals)
        cls = type(self).__name__
        trajectories = positive_int(trajectories, f"{cls}.reset: trajectories")
        tasks, n = goals.shape[0], goals.shape[0] * trajectories
        kw = {"generator": generator, "dtype": torch.float64, "device": goals.device}
        c = self.reset_noise_scale
        u = torch.rand(n, _NQ, **kw)
        z = torch.randn(n, _NV, **kw)
        qpos = self.model.qpos0[None] + (-c + 2 * c * u).cpu().numpy()
        qvel = c * z.cpu().numpy()
        batch = self._batch(n)
        batch.qpos[:], batch.qvel[:], batch.qacc_warmstart[:] = qpos, qvel, 0.0
        batch.forward(stage=self._mj.mjtStage.mjSTAGE_POS)  # xpos, as mj_forward after gym's set_state
        like = goals.new_empty(tasks, trajectories, 0, dtype=torch.float64)
        return self._to_state(qpos, qvel, np.zeros((n, _NV)), batch.xpos[:, 1], like)

    def observe(self, state: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """The policy's observation [tasks, trajectories, 20] in the goals' dtype."""
        return state[..., :OBS_DIM].to(goals.dtype)

    def step(self, state: torch.Tensor, action: torch.Tensor, goals: torch.Tensor):
        """(next state, reward, done) for states [tasks, trajectories, STATE_DIM] and actions
        [tasks, trajectories, 6]; reward in the goals' dtype, done always False."""
        self._check_goals(goals)
        cls = type(self).__name__
        tasks = goals.shape[0]
        if (not isinstance(state, torch.Tensor) or not isinstance(action, torch.Tensor) or state.dim() != 3
                or state.shape != (tasks, state.shape[1], STATE_DIM) or state.shape[1] < 1
                or action.shape != (*state.shape[:2], _NU)):
            shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (state, action)]
            raise ValueError(f"{cls}.step: state must be [tasks={tasks}, trajectories, {STATE_DIM}] and action "
                             f"[tasks, trajectories, {_NU}], got {shapes[0]} and {shapes[1]}")
        if not (state.dtype.is_floating_point and action.dtype.is_floating_point):
            raise ValueError(f"{cls}.step: state and action must be floating point, got {state.dtype}, "
                             f"{action.dtype}")
        n = state.shape[0] * state.shape[1]
        s = state.detach().reshape(n, STATE_DIM).to("cpu", torch.float64).numpy()
        a = action.detach().reshape(n, _NU).to("cpu", torch.float64).numpy()
        if not np.isfinite(a).all():
            raise ValueError(f"{cls}.step: actions must be finite (a policy with non-finite parameters?)")
        if not np.isfinite(s).all():
            raise ValueError(f"{cls}.step: states must be finite")
        ctrl = self._ctrl(a)
        batch = self._batch(n)
        batch.qpos[:, 0] = s[:, _QPOS0]
        batch.qpos[:, 1:] = s[:, : _NQ - 1]
        batch.qvel[:] = s[:, _NQ - 1: _NQ - 1 + _NV]
        batch.qacc_warmstart[:] = s[:, _WARM:]
        batch.ctrl[:] = ctrl
        batch.step(nstep=self.frame_skip)
        qpos, qvel = batch.qpos.copy(), batch.qvel.copy()
        next_state = self._to_state(qpos, qvel, batch.qacc_warmstart.copy(), batch.xpos[:, 1], state)
        velocity = (qpos[:, 0] - s[:, _QPOS0]) / self.dt
        ctrl_cost = self.ctrl_cost_weight * np.sum(np.square(ctrl), axis=1)
        velocity = torch.from_numpy(velocity).reshape(state.shape[:2]).to(goals.device)
        ctrl_cost = torch.from_numpy(ctrl_cost).reshape(state.shape[:2]).to(goals.device)
        reward = self._forward_reward(velocity, goals.to(torch.float64)[:, None]) - ctrl_cost
        done = torch.zeros(state.shape[:2], dtype=torch.bool, device=goals.device)
        return next_state, reward.to(goals.dtype), done

    def _check_goals(self, goals) -> None:
        cls = type(self).__name__
        if not isinstance(goals, torch.Tensor) or goals.dim() != 1 or goals.shape[0] == 0:
            shape = tuple(goals.shape) if isinstance(goals, torch.Tensor) else type(goals).__name__
            raise ValueError(f"{cls}: goals must be a [tasks] tensor with at least one task, got {shape}")
        if not goals.dtype.is_floating_point:
            raise ValueError(f"{cls}: goals must be floating point, got {goals.dtype}")

    @staticmethod
    def _check_tasks(name: str, tasks) -> None:
        positive_int(tasks, f"{name}.sample_goals: tasks")


class HalfCheetahVel(_HalfCheetah):
    """Run at a goal velocity (Finn et al., 2017; HalfCheetahVelEnv of the reference port):
    reward −|v − goal| − 0.05·Σctrl², goals uniform on [low, high] (default [0, 2])."""

    def __init__(self, low: float = 0.0, high: float = 2.0, **kwargs):
        self.low, self.high = finite_number(low, "HalfCheetahVel: low"), finite_number(high, "HalfCheetahVel: high")
        if not self.low < self.high:
            raise ValueError(f"HalfCheetahVel: need low < high, got low={low}, high={high}")
        super().__init__(**kwargs)

    def sample_goals(self, tasks: int, generator: torch.Generator | None = None, dtype=torch.float32,
                     device="cpu") -> torch.Tensor:
        """[tasks] goal velocities, uniform on [low, high]."""
        self._check_tasks("HalfCheetahVel", tasks)
        return self.low + (self.high - self.low) * torch.rand(tasks, generator=generator, dtype=dtype, device=device)

    def _check_goals(self, goals) -> None:
        super()._check_goals(goals)
        if not torch.isfinite(goals).all():
            raise ValueError("HalfCheetahVel: goal velocities must be finite")

    @staticmethod
    def _forward_reward(velocity, goals):
        return -(velocity - goals).abs()


class HalfCheetahDir(_HalfCheetah):
    """Run forward (+1) or backward (−1) (Finn et al., 2017; HalfCheetahDirEnv of the reference
    port): reward direction·v − 0.05·Σctrl², directions ±1 with probability 1/2."""

    def sample_goals(self, tasks: int, generator: torch.Generator | None = None, dtype=torch.float32,
                     device="cpu") -> torch.Tensor:
        """[tasks] directions, +1 or −1 with probability 1/2."""
        self._check_tasks("HalfCheetahDir", tasks)
        bits = torch.randint(0, 2, (tasks,), generator=generator, device=device)
        return (2 * bits - 1).to(dtype)

    def _check_goals(self, goals) -> None:
        super()._check_goals(goals)
        if not (goals.abs() == 1).all():
            raise ValueError("HalfCheetahDir: goals (directions) must be +1 or -1")

    @staticmethod
    def _forward_reward(velocity, goals):
        return goals * velocity
