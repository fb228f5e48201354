"""``python -m metafast train {navigation,half-cheetah-vel,half-cheetah-dir}`` and
``python -m metafast eval CHECKPOINT`` (RL).

Meta-trains a Gaussian MLP policy on 2D navigation or on the MAML paper's
half-cheetah tasks with MAML-RL (or, with ``--pretrain``, one policy on all
tasks without adaptation), batched over tasks.
Defaults: the reference port's 2d-navigation.yaml (64-64 tanh, 20 trajectories
per task, inner rate 0.1, meta-batch 20, gamma 0.99, GAE lambda 1.0, TRPO with
max KL 0.01, 10 CG iterations, damping 1e-5, 15 backtracking steps of 0.8, 500
iterations, 100-step episodes); halfcheetah-{vel,dir}.yaml differ only in the
meta-batch, 40 (their episodes are 100 steps too). The half-cheetah needs the
``mujoco`` extra. A run writes to ``--out``: ``checkpoint.pt`` (``--resume``
continues from it, bit-identically), ``results.json``, ``returns.png`` and, for
navigation, ``trajectories.png`` (a few held-out goals before and after one step), each
replaced atomically; a new run in a folder that holds another run's outputs needs
``--overwrite``, which deletes them first. Ctrl-C (exit status 130) and SIGTERM (143) save the
state after the last completed iteration.
``eval`` reports the average return after 0..3 policy-gradient steps on
held-out tasks, with 95% intervals, for a checkpoint, optional baselines
(``--baseline``) and a random initialisation.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

from metafast import distributed
from metafast._optional import MissingExtraError, require
from metafast.devices import resolve_device
from metafast.rl.envs import Navigation2D
from metafast.rl.evaluate import adaptation_returns, mean_ci95
from metafast.rl.maml_rl import MetaRL, MetaRLConfig
from metafast.rl.policies import GaussianMLPPolicy
from metafast.training import checkpoint, files
from metafast.training.args import INT_MAX, TEST_SEED, CLIError, check_ints, check_types, run_command

__all__ = ["main_train", "main_eval", "is_rl_checkpoint", "ENVS"]

FORMAT = "metafast-rl-navigation-v1"  # every RL checkpoint (args["env"] names the task family; navigation if absent)
CHECKPOINT = checkpoint.NAME
# what defines a run: taken from the checkpoint on --resume
_STRUCTURAL = ("hidden", "activation", "pretrain", "first_order", "outer", "meta_batch", "trajectories", "inner_lr",
               "gamma", "gae_lambda", "max_kl", "cg_iters", "cg_damping", "ls_max_steps", "ls_backtrack_ratio",
               "meta_lr", "ppo_clip", "ppo_epochs", "max_steps", "seed", "dtype")


# the task families `train` knows: (description, default meta-batch, default episode length); the
# half-cheetah defaults are the reference port's halfcheetah-vel.yaml / halfcheetah-dir.yaml
ENVS = {
    "navigation": ("MAML-RL on 2D navigation (defaults: the reference port's setup).", 20, 100),
    "half-cheetah-vel": (("MAML-RL on the MAML paper's half-cheetah goal velocities (defaults: the reference "
                          "port's halfcheetah-vel.yaml; needs the `mujoco` extra)."), 40, 100),
    "half-cheetah-dir": (("MAML-RL on the MAML paper's half-cheetah forward/backward directions (defaults: the "
                          "reference port's halfcheetah-dir.yaml; needs the `mujoco` extra)."), 40, 100),
}


def _train_parser(env: str = "navigation") -> argparse.ArgumentParser:
    description, meta_batch, max_steps = ENVS[env]
    p = argparse.ArgumentParser(prog=f"python -m metafast train {env}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(env=env)
    p.add_argument("--iterations", type=int, default=500, help="outer (meta) iterations in total")
    p.add_argument("--meta-batch", type=int, default=meta_batch,
                   help="tasks (goals) per iteration" if env == "navigation" else "tasks per iteration")
    p.add_argument("--trajectories", type=int, default=20, help="trajectories per task for each step")
    p.add_argument("--inner-lr", type=float, default=0.1, help="inner policy-gradient step size")
    p.add_argument("--first-order", action="store_true", help="first-order MAML")
    p.add_argument("--pretrain", action="store_true", help="no inner step: pretrain one policy on all tasks")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="hidden widths (paper: 100 100)")
    p.add_argument("--activation", default="tanh", choices=["tanh", "relu"], help="paper: relu")
    p.add_argument("--outer", default="trpo", choices=["trpo", "vanilla", "ppo"], help="outer optimiser")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="Adam rate for --outer vanilla/ppo")
    p.add_argument("--ppo-clip", type=float, default=0.2)
    p.add_argument("--ppo-epochs", type=int, default=5)
    p.add_argument("--max-kl", type=float, default=0.01)
    p.add_argument("--cg-iters", type=int, default=10)
    p.add_argument("--cg-damping", type=float, default=1e-5)
    p.add_argument("--ls-max-steps", type=int, default=15)
    p.add_argument("--ls-backtrack-ratio", type=float, default=0.8)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--gae-lambda", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=max_steps,
                   help="episode horizon" if env == "navigation" else "episode horizon (MAML paper: 200)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--eval-tasks", type=int, default=40, help="held-out goals evaluated at the end (0: skip)")
    p.add_argument("--eval-steps", type=int, default=3, help="policy-gradient steps at evaluation")
    p.add_argument("--checkpoint-every", type=int, default=10, help="save every N iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of training")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--out", default=None, help=f"output folder (default runs/{env}[-pretrained])")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metafast eval",
                                description="Average return on held-out tasks (navigation goals, half-cheetah "
                                            "velocities or directions) after 0..N policy-gradient steps, for an "
                                            "RL checkpoint, baselines and a random initialisation.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.pt of `train navigation` (or half-cheetah-vel/-dir), or its "
                                      "run folder")
    p.add_argument("--baseline", action="append", default=[], help="another RL checkpoint to compare (repeatable)")
    p.add_argument("--no-random", action="store_true", help="skip the random initialisation")
    p.add_argument("--tasks", type=int, default=40, help="held-out tasks")
    p.add_argument("--steps", type=int, default=3, help="policy-gradient steps")
    p.add_argument("--trajectories", type=int, default=None, help="per step and task (default: the run's)")
    p.add_argument("--inner-lr", type=float, default=None, help="step size (default: the run's)")
    p.add_argument("--later-lr", type=float, default=None,
                   help="step size from the second step on (default: --inner-lr; the MAML authors' test script "
                        "halves it)")
    p.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the held-out goals and sampling")
    p.add_argument("--json", default=None, help="result file (default: <run folder>/eval.json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="print only the table")
    return p


# ----------------------------------------------------------------------------- helpers
def _config(a) -> MetaRLConfig:
    try:
        return MetaRLConfig(trajectories=a.trajectories, meta_batch=a.meta_batch, inner_lr=a.inner_lr,
                            adapt=not a.pretrain, first_order=a.first_order, gamma=a.gamma,
                            gae_lambda=a.gae_lambda, outer=a.outer, max_kl=a.max_kl, cg_iters=a.cg_iters,
                            cg_damping=a.cg_damping, ls_max_steps=a.ls_max_steps,
                            ls_backtrack_ratio=a.ls_backtrack_ratio, meta_lr=a.meta_lr, ppo_clip=a.ppo_clip,
                            ppo_epochs=a.ppo_epochs)
    except ValueError as e:  # "MetaRLConfig: inner_lr must ..." -> "--inner-lr must ..."
        name, _, rest = str(e).removeprefix("MetaRLConfig: ").partition(" ")
        raise CLIError(f"--{name.replace('_', '-')} {rest}") from None


def _env_name(args: dict) -> str:
    return args.get("env", "navigation")  # checkpoints from before the half-cheetah have no "env"


def _make_env(args: dict):
    name = _env_name(args)
    if name == "navigation":
        return Navigation2D(max_steps=args["max_steps"])
    if name not in ENVS:
        raise CLIError(f"unknown environment {name!r} (known: {', '.join(ENVS)})")
    from metafast.rl import half_cheetah
    cls = half_cheetah.HalfCheetahVel if name == "half-cheetah-vel" else half_cheetah.HalfCheetahDir
    return cls(max_steps=args["max_steps"])


def _build(args: dict, device: torch.device):
    """(env, policy) of a run from its stored arguments; the policy is seeded by args['seed']."""
    try:
        env = _make_env(args)
        init = torch.Generator().manual_seed(args["seed"])
        policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, tuple(args["hidden"]), args["activation"],
                                   generator=init)
    except (ValueError, MissingExtraError) as e:
        raise CLIError(str(e)) from None
    return env, policy.to(device=device, dtype=getattr(torch, args["dtype"]))


# ----------------------------------------------------------------------------- checkpoints
_WHAT = "a checkpoint of `train navigation` or `train half-cheetah-*`"
# what eval and --resume read from a checkpoint
_KEYS = ("iteration", "args", "policy", "generator", "history", "elapsed_s", "optimizer")
# the type of each stored argument (hidden: a list of ints, checked apart)
_TYPES = {**{k: int for k in ("meta_batch", "trajectories", "cg_iters", "ls_max_steps", "ppo_epochs", "max_steps",
                              "seed")},
          **{k: float for k in ("inner_lr", "gamma", "gae_lambda", "max_kl", "cg_damping", "ls_backtrack_ratio",
                                "meta_lr", "ppo_clip")},
          "pretrain": bool, "first_order": bool, "activation": str, "outer": str, "dtype": str, "env": str}
_CHOICES = {"activation": ("tanh", "relu"), "dtype": ("float32", "float64"), "env": tuple(ENVS)}


def _check_stored(args: dict, path: Path) -> None:
    """A checkpoint's arguments describe a run that `train` would accept."""
    check_types(args, _TYPES, path)
    for k, allowed in _CHOICES.items():
        if k in args and args[k] not in allowed:
            raise CLIError(f"checkpoint {path} is invalid: its argument {k} is {args[k]!r}, not one of {allowed}")
    hidden = args["hidden"]
    if not isinstance(hidden, (list, tuple)) or not all(type(h) is int for h in hidden):
        raise CLIError(f"checkpoint {path} is invalid: its argument hidden is {hidden!r}, not a list of ints")
    run = argparse.Namespace(**args)
    try:
        check_ints(run, {k: v for k, v in _TRAIN_INTS.items() if k in args})
        _check_hidden(run.hidden)
        _config(run)
    except CLIError as e:
        raise CLIError(f"checkpoint {path} is invalid: its arguments fail the check of `train`: {e}") from None


def _read(path) -> tuple[dict, Path]:
    return checkpoint.read(path, FORMAT, _WHAT)


def _load(path) -> tuple[dict, Path]:
    """A complete RL checkpoint with valid arguments, and its path."""
    state, p = _read(path)
    checkpoint.check_complete(state, p, _KEYS, _STRUCTURAL)
    _check_stored(state["args"], p)
    return state, p


def _load_policy(state: dict, path: Path, device: torch.device):
    env, policy = _build(state["args"], device)
    with checkpoint.restoring(f"checkpoint {path} does not fit the policy its arguments describe"):
        policy.load_state_dict(state["policy"])
    return env, policy


def is_rl_checkpoint(path: str) -> bool:
    """Whether ``path`` (a file or run folder) holds a checkpoint of `train navigation` / `half-cheetah-*`
    (complete or not: eval then says what is wrong with it)."""
    try:
        _read(path)
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def evaluate_policies(env, policies: dict, tasks: int, steps: int, trajectories: int, lr: float, gamma: float,
                      gae_lambda: float, seed: int, device, later_lr: float | None = None
                      ) -> tuple[dict, dict, torch.Tensor]:
    """Every policy on the same held-out goals and noise stream: ({label: {mean, ci95}}, {label: episodes}, goals)."""
    dtype = next(iter(policies.values())).log_std.dtype
    goals = env.sample_goals(tasks, torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    table, episodes = {}, {}
    for label, policy in policies.items():
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        returns, eps = adaptation_returns(env, policy, goals, steps, trajectories, lr, gamma, gae_lambda, gen,
                                          later_lr)
        stats = [mean_ci95(r) for r in returns]
        table[label] = {"mean": [m for m, _ in stats], "ci95": [c for _, c in stats]}
        episodes[label] = eps
    return table, episodes, goals


def format_table(table: dict) -> str:
    steps = len(next(iter(table.values()))["mean"])
    head = f"{'policy':<12}" + "".join(f"{f'{k} steps':>18}" for k in range(steps))
    rows = [head, "-" * len(head)]
    for label, r in table.items():
        rows.append(f"{label:<12}" + "".join(f"{f'{m:.2f} ± {c:.2f}':>18}" for m, c in zip(r["mean"], r["ci95"])))
    return "\n".join(rows)


# ----------------------------------------------------------------------------- train
# the smallest value of each integer option (all are at most INT_MAX, see metafast.training.args)
_TRAIN_INTS = {"iterations": 1, "meta_batch": 1, "trajectories": 1, "cg_iters": 1, "ls_max_steps": 1,
               "ppo_epochs": 1, "max_steps": 1, "eval_tasks": 0, "eval_steps": 1, "checkpoint_every": 1, "seed": 0,
               "threads": 1}
_EVAL_INTS = {"tasks": 2, "steps": 0, "trajectories": 1, "seed": 0, "threads": 1}
# what a run writes to --out, and eval into the run folder by default: a new run there needs
# --overwrite, which removes them; and the temporary files a killed run may leave (files.write_bytes's,
# and checkpoint.tmp / results.tmp of earlier versions)
_OUTPUTS = (CHECKPOINT, "results.json", "returns.png", "trajectories.png", "eval.json")
_EVAL_PLOTS = ("eval_trajectories_*.png",)
_LEFTOVERS = tuple(f".{n}.*.tmp" for n in _OUTPUTS + _EVAL_PLOTS) + ("checkpoint.tmp", "results.tmp", "eval.tmp")


def _check_hidden(hidden) -> None:
    if not all(1 <= h <= INT_MAX for h in hidden):
        raise CLIError(f"--hidden widths must be positive, got {hidden}")


def _validate_train(a) -> None:
    check_ints(a, _TRAIN_INTS)
    _check_hidden(a.hidden)
    if a.resume and a.overwrite:
        raise CLIError("--resume and --overwrite contradict each other")


def _resume(a, path: Path) -> dict:
    """The checkpoint to continue; the run's own definition replaces this command line's."""
    state, _ = _load(path)
    if _env_name(state["args"]) != a.env:
        raise CLIError(f"{path} is a `train {_env_name(state['args'])}` run, not `train {a.env}`")
    for k in _STRUCTURAL:
        setattr(a, k, state["args"][k])
    return state


def _prepare(a) -> tuple[Path, dict | None]:
    """The output folder and the checkpoint to continue (None: a new run)."""
    out = Path(a.out or (f"runs/{a.env}-pretrained" if a.pretrain else f"runs/{a.env}")).expanduser()
    files.check_out(out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and a.resume:
        return out, _resume(a, ckpt_path)
    if ckpt_path.exists() and not a.overwrite:
        raise CLIError(f"{ckpt_path} exists: pass --resume to continue it or --overwrite to start afresh")
    return out, None


def _restore(state: dict, path: Path, policy, meta, gen) -> tuple[list, int, float]:
    with checkpoint.restoring(f"checkpoint {path} does not fit the run its arguments describe"):
        policy.load_state_dict(state["policy"])
        if meta.optimizer is not None:
            meta.optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
    history, start, elapsed = state["history"], state["iteration"], state["elapsed_s"]
    if not isinstance(history, list) or len(history) != start or not isinstance(elapsed, (int, float)):
        raise CLIError(f"checkpoint {path} is inconsistent: its history does not end at its iteration {start}")
    return history, start, float(elapsed)


def _train(a) -> int:
    run = _Run(a)
    run.announce()
    stop = run.train()
    checkpoint.save(run.ckpt_path, run.last)
    if stop:
        print(f"\ninterrupted: saved iteration {run.last['iteration']} to {run.ckpt_path}; continue with --resume",
              file=sys.stderr)
        return stop
    _finish(a, run.out, run.env, run.policy, run.config, run.history, run.elapsed, run.device, run.label)
    return 0


class _Run:
    """A training run: its output folder, environment, policy, MetaRL, generator, history and clock."""

    def __init__(self, a):
        _validate_train(a)
        self.a = a
        self.device = resolve_device(a.device)
        self.out, state = _prepare(a)
        self.ckpt_path = self.out / CHECKPOINT
        self.config = _config(a)
        # before touching --out: a missing `mujoco` extra fails here
        self.env, self.policy = _build(vars(a), self.device)
        if state is None:  # a new run: never beside another run's files
            files.start_afresh(self.out, a.overwrite, _OUTPUTS, _EVAL_PLOTS, _LEFTOVERS)
        files.make_out(self.out)
        self.meta = MetaRL(self.env, self.policy, self.config)
        self.gen = torch.Generator(device=self.device).manual_seed(a.seed + 1)
        self.history, self.start, self.elapsed = [], 0, 0.0
        if state is not None:
            self.history, self.start, self.elapsed = _restore(state, self.ckpt_path, self.policy, self.meta, self.gen)
        self.label = "pretrained" if a.pretrain else "MAML"

    def snapshot(self) -> dict:
        """The state after the last completed iteration (a signal may land mid-iteration)."""
        optimizer = self.meta.optimizer
        return {"format": FORMAT, "iteration": len(self.history), "args": dict(vars(self.a)),
                "config": self.config.to_dict(),
                "policy": {k: v.clone() for k, v in self.policy.state_dict().items()},
                "generator": self.gen.get_state(), "history": list(self.history), "elapsed_s": self.elapsed,
                "optimizer": None if optimizer is None else copy.deepcopy(optimizer.state_dict())}

    def announce(self) -> None:
        a = self.a
        if not a.quiet:
            print(f"train {a.env}: {self.label}, {'first' if a.first_order else 'second'}-order, outer {a.outer}, "
                  f"policy {a.hidden} {a.activation}, {a.meta_batch} tasks x {a.trajectories} trajectories, "
                  f"device {self.device}, {torch.get_num_threads()} threads, iterations {self.start}->{a.iterations}, "
                  f"out {self.out}")

    def train(self) -> int:
        """The iterations from ``start`` on, each followed by its snapshot (``last``); the exit status of a stop
        by Ctrl-C (130) or SIGTERM (143), else 0."""
        a = self.a
        tqdm = require("tqdm", "the progress bar").tqdm
        bar = tqdm(range(self.start, a.iterations), initial=self.start, total=a.iterations, disable=a.quiet,
                   unit="it", dynamic_ncols=True)
        self.last, stop = self.snapshot(), 0
        with distributed.Context().deferred_interrupts():  # SIGTERM raises distributed.Terminated, like Ctrl-C
            try:
                for iteration in bar:
                    self._iteration(iteration, bar)
            except KeyboardInterrupt as e:
                stop = distributed.exit_status(e)
            finally:
                bar.close()
        return stop

    def _iteration(self, iteration: int, bar) -> None:
        """Iteration ``iteration`` (0-based), then its snapshot ``last`` (checkpointed every --checkpoint-every)."""
        t0 = time.perf_counter()
        logs = self.meta.step(self.gen)
        if not all(torch.isfinite(p).all() for p in self.policy.parameters()):
            raise CLIError(f"non-finite policy parameters after iteration {iteration + 1}; lower --max-kl "
                           "or --meta-lr")
        self.elapsed += time.perf_counter() - t0
        self.history.append({"iteration": iteration + 1, **logs, "time_s": self.elapsed})
        self.last = self.snapshot()
        bar.set_postfix(before=f"{logs['train_return']:.1f}", after=f"{logs['valid_return']:.1f}")
        if (iteration + 1) % self.a.checkpoint_every == 0:
            checkpoint.save(self.ckpt_path, self.last)


def _finish(a, out: Path, env, policy, config, history: list, elapsed: float, device, label: str) -> None:
    """results.json, returns.png and, with --eval-tasks, the evaluation (trajectories.png for navigation)."""
    from metafast.rl.plots import plot_returns, plot_trajectories
    files.write_rendered(out / "returns.png", lambda f: plot_returns(history, f, label))
    results = {"args": vars(a), "config": config.to_dict(), "iterations": len(history), "train_time_s": elapsed,
               "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "history": history}
    if a.eval_tasks:
        t0 = time.perf_counter()
        _, random_policy = _build(vars(a), device)
        table, eps, goals = evaluate_policies(env, {label.lower(): policy, "random": random_policy},
                                              a.eval_tasks, a.eval_steps, a.trajectories, a.inner_lr, a.gamma,
                                              a.gae_lambda, TEST_SEED, device)
        ours = eps[label.lower()]
        if a.env == "navigation":
            files.write_rendered(out / "trajectories.png", lambda f: plot_trajectories(
                goals, ours[0], ours[1], f, title=f"{label}: held-out goals, before (gray) and after one step (blue)"))
        results["evaluation"] = {"tasks": a.eval_tasks, "steps": a.eval_steps, "trajectories": a.trajectories,
                                 "inner_lr": a.inner_lr, "seed": TEST_SEED, "returns": table,
                                 "time_s": time.perf_counter() - t0}
        print(format_table(table))
    files.write_json(out / "results.json", results)
    if not a.quiet:
        print(f"trained {len(history)} iterations in {elapsed:.0f} s; wrote {out}/results.json, returns.png"
              + (", trajectories.png" if a.eval_tasks and a.env == "navigation" else ""))


# ----------------------------------------------------------------------------- eval
def _policies(a, state: dict, path: Path, device) -> tuple[object, dict]:
    """The environment, and the policies to compare by label: the checkpoint's, --baseline's, random."""
    args = state["args"]
    env, policy = _load_policy(state, path, device)
    policies = {("pretrained" if args["pretrain"] else "maml"): policy}
    for other in a.baseline:
        s, p = _load(other)
        if _env_name(s["args"]) != _env_name(args):
            raise CLIError(f"--baseline {other} is a `train {_env_name(s['args'])}` run, but {path} is a "
                           f"`train {_env_name(args)}` run")
        _, pol = _load_policy(s, p, device)
        name = "pretrained" if s["args"]["pretrain"] else "maml"
        policies[name if name not in policies else p.parent.name] = pol
    if not a.no_random:
        policies["random"] = _build(args, device)[1]
    return env, policies


def _eval(a) -> int:
    check_ints(a, _EVAL_INTS)
    device = resolve_device(a.device)
    state, path = _load(a.checkpoint)
    args = state["args"]
    env, policies = _policies(a, state, path, device)
    trajectories = a.trajectories or args["trajectories"]
    lr = a.inner_lr if a.inner_lr is not None else args["inner_lr"]
    later = lr if a.later_lr is None else a.later_lr
    if not all(r > 0 and math.isfinite(r) for r in (lr, later)):
        raise CLIError(f"--inner-lr and --later-lr must be positive numbers, got {lr}, {later}")
    t0 = time.perf_counter()
    table, eps, goals = evaluate_policies(env, policies, a.tasks, a.steps, trajectories, lr, args["gamma"],
                                          args["gae_lambda"], a.seed, device, later)
    seconds = time.perf_counter() - t0
    print(format_table(table))
    out = Path(a.json) if a.json else path.parent / "eval.json"
    payload = {"checkpoint": str(path), "iteration": state["iteration"], "tasks": a.tasks, "steps": a.steps,
               "trajectories": trajectories, "inner_lr": lr, "later_lr": later, "seed": a.seed, "returns": table,
               "time_s": seconds, "device": str(device), "torch": torch.__version__}
    files.write_json(out, payload)
    if a.steps >= 1 and _env_name(args) == "navigation":
        from metafast.rl.plots import plot_trajectories
        for label, e in eps.items():
            files.write_rendered(out.parent / f"eval_trajectories_{label}.png", lambda f: plot_trajectories(
                goals, e[0], e[1], f, title=f"{label}: before (gray) and after one step (blue)"))
    if not a.quiet:
        print(f"evaluated {len(policies)} policies on {a.tasks} held-out tasks in {seconds:.1f} s; wrote {out}")
    return 0


def main_train(argv, env: str = "navigation") -> int:
    """``train ENV ARGS`` (argv without ENV), ENV one of ENVS."""
    return run_command(_train_parser(env), argv, _train)


def main_eval(argv) -> int:
    return run_command(_eval_parser(), argv, _eval)
