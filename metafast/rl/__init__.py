"""metafast.rl: MAML for reinforcement learning, batched over tasks on the device.

- ``Navigation2D``: the MAML paper's 2D navigation, every trajectory of every task stepped at once.
- ``HalfCheetahVel`` / ``HalfCheetahDir``: the MAML paper's half-cheetah tasks, simulated with
  MuJoCo (the ``mujoco`` extra, imported when one is made), every trajectory at once.
- ``GaussianMLPPolicy`` / ``CategoricalMLPPolicy``: MLP policies run with per-task parameters.
- ``MetaRL``: sampling, the batched inner policy-gradient step and the outer TRPO
  (or vanilla / PPO-clip) step, first or second order.
- ``reference``: the per-task eager loop every batched path is tested against.
"""
from metafast.rl import baseline, reference
from metafast.rl.envs import Navigation2D
from metafast.rl.episodes import Episodes, expand_params, rollout
from metafast.rl.evaluate import adaptation_returns, mean_ci95
from metafast.rl.gae import discounted_returns, gae, normalize_advantages
from metafast.rl.half_cheetah import HalfCheetahDir, HalfCheetahVel
from metafast.rl.maml_rl import MetaRL, MetaRLConfig, TaskBatch, inner_step, kl_hvp, prepare, surrogate
from metafast.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy

__all__ = ["Navigation2D", "HalfCheetahVel", "HalfCheetahDir", "GaussianMLPPolicy", "CategoricalMLPPolicy", "MetaRL", "MetaRLConfig", "TaskBatch",
           "Episodes", "rollout", "expand_params", "prepare", "inner_step", "surrogate", "kl_hvp",
           "discounted_returns", "gae", "normalize_advantages", "adaptation_returns", "mean_ci95", "baseline",
           "reference"]
