"""Command lines of ``train`` and ``eval``: parsing, defaults, checks, merging a resumed run's
arguments, and running a command with user errors as one line."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings

import torch

from metafast import distributed


class CLIError(ValueError):
    """A user error: printed as one line by :func:`run_command`, exit code 1 (2 is argparse's, for
    usage errors)."""


# arguments that define the model and the training run; the rest may change on --resume
STRUCTURAL = ("ways", "shots", "queries", "inner_steps", "inner_lr", "meta_batch", "meta_lr", "first_order",
              "meta_sgd", "anil", "hidden", "seed", "split_seed", "algorithm", "lslr", "msl_epochs", "per_step_bn",
              "first_order_epochs", "cosine_lr", "epoch_iterations", "pooling", "cosine_iterations")
# arguments of this invocation only, never taken from the checkpoint
SESSION = ("dataset", "out", "resume", "overwrite", "data_dir", "cache_dir", "device", "quiet", "iterations",
           "threads")
# paths that may differ between machines of one distributed run
PER_MACHINE = ("data_dir", "cache_dir")
TEST_SEED = 2_000_003  # fixed test episodes, independent of --seed


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metafast train",
        description="Meta-train Conv-4 on Omniglot with MAML (defaults: the MAML paper's setup), then evaluate. "
                    "Under torchrun each meta-batch is split over the processes (see README).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", nargs="?", default="omniglot", choices=["omniglot"], help="data set")
    p.add_argument("--data-dir", default=os.environ.get("METAFAST_OMNIGLOT", "data/omniglot"),
                   help="folder with images_background.zip and images_evaluation.zip (env METAFAST_OMNIGLOT)")
    p.add_argument("--cache-dir", default=None,
                   help="where to cache decoded images if --data-dir is read-only (default ~/.cache/metafast)")
    p.add_argument("--ways", type=int, default=5, help="classes per task (N)")
    p.add_argument("--shots", type=int, default=1, help="support images per class (K)")
    p.add_argument("--queries", type=int, default=None, help="query images per class (default: = shots)")
    p.add_argument("--inner-steps", type=int, default=None, help="inner steps in training (default 1; 5 if ways >= 20)")
    p.add_argument("--algorithm", default="maml", choices=["maml", "maml++"],
                   help="maml: the MAML paper's setup; maml++: How to train your MAML's Omniglot config (every "
                        "component on; each can be switched with its flag below)")
    p.add_argument("--inner-lr", type=float, default=None,
                   help="inner rate on the mean cross-entropy (default 2.0 = the MAML paper's 0.4 / 0.1 on N x mean; "
                        "maml++: 0.1)")
    p.add_argument("--meta-batch", type=int, default=None,
                   help="tasks per meta-update, over all processes (default 32; 16 if ways >= 20)")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--iterations", type=int, default=None,
                   help="meta-training iterations (default 60,000; maml++: 100 epochs x --epoch-iterations)")
    p.add_argument("--first-order", action="store_true", help="first-order MAML (no second derivatives)")
    p.add_argument("--meta-sgd", action="store_true", help="Meta-SGD: learn per-parameter inner rates")
    p.add_argument("--anil", action="store_true", help="ANIL: adapt only the linear head")
    p.add_argument("--hidden", type=int, default=64, help="conv channels")
    p.add_argument("--pooling", default=None, choices=["stride", "max"],
                   help="Conv-4 downsampling (default stride; maml++: max-pooling)")
    mpp = p.add_argument_group("MAML++ components (defaults: on with --algorithm maml++, off otherwise)")
    mpp.add_argument("--lslr", action=argparse.BooleanOptionalAction, default=None,
                     help="learned inner rates per layer and step")
    mpp.add_argument("--msl-epochs", type=int, default=None,
                     help="multi-step loss, annealed to the last step over this many epochs (0: off; maml++: 10)")
    mpp.add_argument("--per-step-bn", action=argparse.BooleanOptionalAction, default=None,
                     help="batch-norm weights and biases per inner step (BNWB); they are not adapted")
    mpp.add_argument("--first-order-epochs", type=int, default=None,
                     help="derivative-order annealing: first order for this many epochs (0: second order throughout, "
                          "the released Omniglot config)")
    mpp.add_argument("--cosine-lr", action=argparse.BooleanOptionalAction, default=None,
                     help="cosine annealing of the meta rate from --meta-lr to 1e-5 over the run")
    mpp.add_argument("--epoch-iterations", type=int, default=500, help="iterations per epoch (the schedules' unit)")
    mpp.add_argument("--cosine-iterations", type=int, default=None,
                     help="the cosine schedule's length (default: --iterations of the run's first start; kept on "
                          "--resume, so a run continued in pieces follows one schedule)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "fused"], help="BatchedMAML backend")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (under torchrun: rank r uses cuda:r)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization and training episodes")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the character split (0: the standard one)")
    p.add_argument("--out", default=None, help="output folder (default runs/omniglot-<N>way-<K>shot)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.add_argument("--val-every", type=int, default=1000, help="validate and checkpoint every N iterations")
    p.add_argument("--val-tasks", type=int, default=200, help="validation tasks")
    p.add_argument("--test-tasks", type=int, default=600, help="test tasks at the end (0: skip)")
    p.add_argument("--test-steps", type=int, default=None,
                   help="inner steps at validation and test (default max(3, --inner-steps))")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metafast eval",
        description="Evaluate a checkpoint written by `python -m metafast train` on Omniglot test tasks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint.pt, or the run folder that holds it")
    p.add_argument("--data-dir", default=None, help="Omniglot folder (default: the one the run used)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--test-tasks", type=int, default=600)
    p.add_argument("--test-steps", type=int, default=None, help="inner steps (default: the run's)")
    p.add_argument("--meta-batch", type=int, default=None, help="tasks evaluated at once (default: the run's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the test episodes")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true")
    return p


def run_command(parser: argparse.ArgumentParser, argv, command) -> int:
    """Parse, run ``command(args)`` in a session; user errors become one line and exit code 1
    (under torchrun, errors that every rank raises alike are printed by rank 0 only)."""
    try:
        a = parser.parse_args(list(argv))
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        with _session(a):
            return command(a)
    except (CLIError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        rank = distributed.env_rank()
        if rank == 0 or not isinstance(e, (CLIError, distributed.SetupError)):
            prefix = f"error: (rank {rank}) " if rank else "error: "
            print(prefix + " ".join(str(e).split()), file=sys.stderr)  # one line
        return 1


@contextlib.contextmanager
def _session(a: argparse.Namespace):
    """Thread count and warning filters for one command, restored afterwards."""
    threads = torch.get_num_threads()
    check_ints(a, {"threads": 1})
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    try:
        with warnings.catch_warnings():
            # Conv-4 always runs on BatchedMAML's torch (or loop) backend unless ANIL: no need to warn
            warnings.filterwarnings("ignore", message="BatchedMAML: using the (torch|loop) backend",
                                    category=RuntimeWarning)
            yield
    finally:
        torch.set_num_threads(threads)


def default_out(a: argparse.Namespace) -> str:
    return f"runs/omniglot-{a.ways}way-{a.shots}shot"


MAML_PP_DEFAULTS = dict(inner_steps=5, meta_batch=8, inner_lr=0.1, pooling="max", lslr=True, msl_epochs=10,
                        per_step_bn=True, first_order_epochs=0, cosine_lr=True)
MAML_DEFAULTS = dict(inner_lr=2.0, pooling="stride", lslr=False, msl_epochs=0, per_step_bn=False,
                     first_order_epochs=0, cosine_lr=False)
MAML_PP_EPOCHS = 100


def resolve_defaults(a: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left at None from the algorithm's setup (runs saved before an option
    existed get its neutral value: plain MAML)."""
    if getattr(a, "algorithm", None) is None:
        a.algorithm = "maml"
    if getattr(a, "epoch_iterations", None) is None:
        a.epoch_iterations = 500
    for k, v in (MAML_PP_DEFAULTS if a.algorithm == "maml++" else MAML_DEFAULTS).items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if getattr(a, "iterations", None) is None:
        a.iterations = MAML_PP_EPOCHS * a.epoch_iterations if a.algorithm == "maml++" else 60_000
    if getattr(a, "cosine_iterations", None) is None:
        a.cosine_iterations = a.iterations
    if a.algorithm == "maml++" and a.test_steps is None:
        a.test_steps = a.inner_steps
    big = a.ways >= 20
    if a.queries is None:
        a.queries = a.shots
    if a.inner_steps is None:
        a.inner_steps = 5 if big else 1
    if a.meta_batch is None:
        a.meta_batch = 16 if big else 32
    if a.test_steps is None:
        a.test_steps = max(3, a.inner_steps)
    if a.out is None:
        a.out = default_out(a)
    return a


# the smallest value of each integer option of `train omniglot`; every integer option is also at
# most INT_MAX (what torch's seeds and sizes hold), so that none overflows later with a traceback
TRAIN_INTS = {"ways": 2, "shots": 1, "queries": 1, "inner_steps": 1, "test_steps": 1, "meta_batch": 1,
              "iterations": 1, "hidden": 1, "val_every": 1, "val_tasks": 0, "test_tasks": 0, "seed": 0,
              "split_seed": 0, "threads": 1, "msl_epochs": 0, "first_order_epochs": 0, "epoch_iterations": 1,
              "cosine_iterations": 1}
EVAL_INTS = {"test_tasks": 1, "test_steps": 1, "meta_batch": 1, "seed": 0, "threads": 1}
INT_MAX = 2 ** 63 - 1


def check_ints(a: argparse.Namespace, minimum: dict[str, int]) -> None:
    """Every integer option named in ``minimum`` is in [minimum, INT_MAX]; None (a default still to
    be filled in) passes."""
    for dest, low in minimum.items():
        value = getattr(a, dest, None)
        if value is None:
            continue
        if value < low or value > INT_MAX:
            bound = f"at least {low}" if value < low else "at most 2**63-1"
            raise CLIError(f"--{dest.replace('_', '-')} must be {bound}, got {value}")


def validate(a: argparse.Namespace, world_size: int = 1) -> None:
    check_ints(a, TRAIN_INTS)
    checks = [
        (a.shots + a.queries <= 20,
         f"--shots + --queries = {a.shots + a.queries} exceeds the 20 drawings of an Omniglot character"),
        (a.inner_lr > 0 and math.isfinite(a.inner_lr), f"--inner-lr must be positive, got {a.inner_lr}"),
        (a.meta_lr > 0 and math.isfinite(a.meta_lr), f"--meta-lr must be positive, got {a.meta_lr}"),
        (a.meta_batch >= world_size,
         f"--meta-batch {a.meta_batch} is smaller than the {world_size} processes: each process adapts at least "
         f"one task of every meta-batch; use a meta-batch of at least {world_size} or fewer processes"),
    ]
    per_step = [f for f, on in (("--lslr", getattr(a, "lslr", False)), ("--per-step-bn", getattr(a, "per_step_bn", False)))
                if on]
    checks.append((not per_step or a.test_steps == a.inner_steps,
                   f"{' and '.join(per_step)} learn one value per inner step: --test-steps ({a.test_steps}) must equal "
                   f"--inner-steps ({a.inner_steps})"))
    checks.append((not (getattr(a, "lslr", False) and a.meta_sgd), "--lslr and --meta-sgd are two rules for the inner rates; choose one"))
    for ok, msg in checks:
        if not ok:
            raise CLIError(msg)
    if a.ways > 400:  # the val split has 100 characters x 4 rotations
        raise CLIError(f"--ways {a.ways} exceeds the 400 classes of the validation split")


# the type of each argument a checkpoint stores that eval and --resume use
_STORED_TYPES = {**{k: int for k in ("ways", "shots", "queries", "inner_steps", "meta_batch", "hidden", "seed",
                                     "split_seed", "test_steps", "iterations", "val_every", "val_tasks",
                                     "test_tasks")},
                 "inner_lr": float, "meta_lr": float, "first_order": bool, "meta_sgd": bool, "anil": bool,
                 "algorithm": str, "lslr": bool, "per_step_bn": bool, "cosine_lr": bool, "pooling": str,
                 "msl_epochs": int, "first_order_epochs": int, "epoch_iterations": int, "cosine_iterations": int,
                 "backend": str, "data_dir": str, "cache_dir": (str, type(None))}


def check_types(stored: dict, types: dict, path) -> None:
    """A checkpoint's stored arguments have the types the run gave them (bools are not ints, ints
    pass as floats); ``path`` names the checkpoint in the error."""
    for k, want in types.items():
        if k not in stored:
            continue  # completeness is checked by the loader
        v = stored[k]
        kinds = want if isinstance(want, tuple) else (want,)
        ok = any(isinstance(v, t) and (t is bool or not isinstance(v, bool)) or (t is float and type(v) is int)
                 for t in kinds)
        if not ok:
            raise CLIError(f"checkpoint {path} is invalid: its argument {k} is {v!r}, not "
                           f"{' or '.join(getattr(t, '__name__', str(t)) for t in kinds)}")


def check_stored_args(stored: dict, path) -> None:
    """A checkpoint's arguments describe a run that `train` would accept."""
    check_types(stored, _STORED_TYPES, path)
    run = argparse.Namespace(**{**{k: None for k in TRAIN_INTS}, **stored})
    try:
        validate(run)
    except CLIError as e:
        raise CLIError(f"checkpoint {path} is invalid: its arguments fail the check of `train`: {e}") from None


def _given(argv: list[str], dest: str) -> bool:
    flag = "--" + dest.replace("_", "-")
    return any(x == flag or x.startswith(flag + "=") for x in argv)


def merge_resumed(a: argparse.Namespace, saved: dict, argv: list[str]) -> list[str]:
    """Take a resumed run's settings into ``a``: its structural ones always, the others unless
    given again on this command line. Returns the flags given here that the run overrides."""
    ignored = []
    for k, v in saved.items():
        if k in SESSION or not hasattr(a, k):
            continue
        given = _given(argv, k)
        if k in STRUCTURAL:  # the run's own settings win
            if given and getattr(a, k) != v:
                ignored.append(f"--{k.replace('_', '-')}")
            setattr(a, k, v)
        elif not given:  # e.g. --test-steps, --val-every: the run's unless given again
            setattr(a, k, v)
    return ignored


def setting(a) -> str:
    """One-phrase description of a run: algorithm, order, ways and shots."""
    algo = ("MAML++" if getattr(a, "algorithm", "maml") == "maml++" else "ANIL" if a.anil
            else "Meta-SGD" if a.meta_sgd else "MAML")
    order = "first-order " if a.first_order else ""
    return f"{order}{algo}, {a.ways}-way {a.shots}-shot"
