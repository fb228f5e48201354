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
              "first_order_epochs", "cosine_lr", "epoch_iterations", "pooling", "cosine_iterations", "model")
# arguments of this invocation only, never taken from the checkpoint (a resumed run's data set is
# checked against the checkpoint's instead)
SESSION = ("dataset", "out", "resume", "overwrite", "data_dir", "cache_dir", "device", "quiet", "iterations",
           "threads")
# paths that may differ between machines of one distributed run
PER_MACHINE = ("data_dir", "cache_dir")
TEST_SEED = 2_000_003  # fixed test episodes, independent of --seed

# data set -> (its name in print, the default --data-dir); --data-dir defaults to $METAFAST_<NAME>
# (METAFAST_OMNIGLOT, METAFAST_MINI_IMAGENET, ...) if set. Channels and split sizes: metafast.data.FEW_SHOT.
DATASETS = {"omniglot": ("Omniglot", "data/omniglot"), "mini-imagenet": ("mini-ImageNet", "data/mini-imagenet"),
            "tiered-imagenet": ("tiered-ImageNet", "data/tiered-imagenet"), "cifar-fs": ("CIFAR-FS", "data/cifar100"),
            "fc100": ("FC100", "data/cifar100")}
MODELS = ("conv4", "resnet12")


def default_data_dir(dataset: str) -> str:
    return os.environ.get("METAFAST_" + dataset.upper().replace("-", "_"), DATASETS[dataset][1])


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metafast train",
        description="Meta-train Conv-4 (or ResNet-12) on a few-shot vision set with MAML and its variants "
                    "(defaults: the data set's published setup, see README), then evaluate. Under torchrun each "
                    "meta-batch is split over the processes (see README).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", nargs="?", default="omniglot", choices=list(DATASETS), help="data set")
    p.add_argument("--data-dir", default=None,
                   help="the data set's folder (default $METAFAST_<NAME>, e.g. METAFAST_MINI_IMAGENET, else "
                        "data/<name>; data/cifar100 for cifar-fs and fc100): omniglot: images_background.zip and "
                        "images_evaluation.zip; mini-imagenet: mini-imagenet-cache-{split}.pkl, or {split}.csv and "
                        "images/; tiered-imagenet: {split}_images_png.pkl and {split}_labels.pkl; cifar-fs, fc100: "
                        "cifar-100-python.tar.gz")
    p.add_argument("--allow-small-splits", action="store_true",
                   help="accept splits smaller than the published ones (a subset, or a synthetic set); without it "
                        "mini-imagenet, tiered-imagenet, cifar-fs and fc100 refuse them (kept on --resume)")
    p.add_argument("--cache-dir", default=None,
                   help="where to cache decoded images if --data-dir is read-only (default ~/.cache/metafast)")
    p.add_argument("--model", default="conv4", choices=list(MODELS),
                   help="conv4: MAML's Conv-4; resnet12: ResNet-12 (the RGB sets only), --hidden H giving the "
                        "widths H, 2.5H, 5H, 10H (default 64: 64-160-320-640)")
    p.add_argument("--ways", type=int, default=5, help="classes per task (N)")
    p.add_argument("--shots", type=int, default=1, help="support images per class (K)")
    p.add_argument("--queries", type=int, default=None,
                   help="query images per class (default: = shots; mini/tiered-imagenet, and maml++ on them: 15)")
    p.add_argument("--inner-steps", type=int, default=None,
                   help="inner steps in training (default: omniglot 1, 5 if ways >= 20; mini/tiered-imagenet 5; "
                        "cifar-fs, fc100 1; maml++ 5)")
    p.add_argument("--algorithm", default="maml", choices=["maml", "maml++"],
                   help="maml: the MAML paper's setup; maml++: How to train your MAML's released config (Omniglot's, "
                        "or mini-ImageNet's on the RGB sets; every component on; each can be switched with its "
                        "flag below)")
    p.add_argument("--inner-lr", type=float, default=None,
                   help="inner rate on the mean cross-entropy; the MAML authors sum over the N classes (N x mean), "
                        "so their alpha is this / N. Default: omniglot 2.0 (= the paper's 0.4 for 5-way, 0.1 for "
                        "20-way); mini/tiered-imagenet 0.05 (= the paper's 0.01 x 5 ways); cifar-fs, fc100 0.5 "
                        "(learn2learn's, a mean loss); maml++ (a mean loss): omniglot 0.1, the others 0.01")
    p.add_argument("--meta-batch", type=int, default=None,
                   help="tasks per meta-update, over all processes (default: omniglot 32, 16 if ways >= 20; "
                        "mini/tiered-imagenet 4 for 1-shot, else 2; cifar-fs, fc100 32; maml++ 8 on omniglot, else 2)")
    p.add_argument("--meta-lr", type=float, default=None,
                   help="Adam learning rate (default 1e-3; cifar-fs, fc100: 3e-3)")
    p.add_argument("--iterations", type=int, default=None,
                   help="meta-training iterations (default 60,000; maml++: 100 epochs x --epoch-iterations)")
    p.add_argument("--first-order", action="store_true", help="first-order MAML (no second derivatives)")
    p.add_argument("--meta-sgd", action="store_true", help="Meta-SGD: learn per-parameter inner rates")
    p.add_argument("--anil", action="store_true", help="ANIL: adapt only the linear head")
    p.add_argument("--hidden", type=int, default=None,
                   help="Conv-4 channels (default: omniglot 64, the others 32; maml++: omniglot 64, the others 48), or "
                        "ResNet-12's first width (default 64)")
    p.add_argument("--pooling", default=None, choices=["stride", "max"],
                   help="Conv-4 downsampling (default: omniglot stride, the others and maml++ max-pooling)")
    mpp = p.add_argument_group("MAML++ components (defaults: on with --algorithm maml++, off otherwise)")
    mpp.add_argument("--lslr", action=argparse.BooleanOptionalAction, default=None,
                     help="learned inner rates per layer and step")
    mpp.add_argument("--msl-epochs", type=int, default=None,
                     help="multi-step loss, annealed to the last step over this many epochs (0: off; maml++: 10 on "
                          "omniglot, 15 on the others)")
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
    p.add_argument("--split-seed", type=int, default=0, help="seed of Omniglot's character split (0: the standard one)")
    p.add_argument("--out", default=None,
                   help="output folder (default runs/<dataset>-<N>way-<K>shot, with -resnet12 for that model)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.add_argument("--val-every", type=int, default=1000, help="validate and checkpoint every N iterations")
    p.add_argument("--val-tasks", type=int, default=200, help="validation tasks")
    p.add_argument("--test-tasks", type=int, default=600, help="test tasks at the end (0: skip)")
    p.add_argument("--test-steps", type=int, default=None,
                   help="inner steps at validation and test (default: omniglot max(3, --inner-steps); "
                        "mini/tiered-imagenet 10; cifar-fs, fc100 1; --inner-steps with --lslr or --per-step-bn, as in "
                        "maml++)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metafast eval",
        description="Evaluate a checkpoint written by `python -m metafast train` on the test tasks of its data set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint.pt, or the run folder that holds it")
    p.add_argument("--data-dir", default=None, help="the data set's folder (default: the one the run used)")
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
    model = "-resnet12" if getattr(a, "model", "conv4") == "resnet12" else ""
    return f"runs/{getattr(a, 'dataset', 'omniglot')}-{a.ways}way-{a.shots}shot{model}"


def _shots(a):
    return a.shots


def _per_step_or(steps):
    """Test steps: --inner-steps when a value is learned per step (LSLR, per-step BN), else ``steps``."""
    return lambda a: a.inner_steps if a.lslr or a.per_step_bn else (steps(a) if callable(steps) else steps)


# The published setup of each data set and algorithm: every option left at None takes its value here,
# in this order (a function: of the options filled before it). Inner rates are on metafast's mean
# cross-entropy; the MAML authors' loss is N x that (their alpha = inner_lr / N), MAML++'s and
# learn2learn's are means. Runs saved before an option existed get its plain-MAML value.
_PLAIN = dict(lslr=False, msl_epochs=0, per_step_bn=False, first_order_epochs=0, cosine_lr=False)
_MAML_PP = dict(pooling="max", lslr=True, per_step_bn=True, first_order_epochs=0, cosine_lr=True, inner_steps=5,
                meta_lr=1e-3, iterations=lambda a: MAML_PP_EPOCHS * a.epoch_iterations,
                test_steps=lambda a: a.inner_steps)
MAML_PP_EPOCHS = 100
SETUPS = {
    "omniglot": {  # MAML paper: 5-way 1 step at 0.4, meta-batch 32, 3 steps at test; 20-way 5 steps at 0.1, 16 tasks
        "maml": dict(_PLAIN, hidden=64, pooling="stride", queries=_shots, inner_lr=2.0,
                     inner_steps=lambda a: 5 if a.ways >= 20 else 1,
                     meta_batch=lambda a: 16 if a.ways >= 20 else 32, meta_lr=1e-3, iterations=60_000,
                     test_steps=_per_step_or(lambda a: max(3, a.inner_steps))),
        "maml++": dict(_MAML_PP, hidden=64, queries=_shots, meta_batch=8, inner_lr=0.1, msl_epochs=10),
    },
    "mini-imagenet": {  # MAML paper: 32 filters, max-pool, 5 steps at 0.01 (10 at test), 15 queries, 4 / 2 tasks
        "maml": dict(_PLAIN, hidden=32, pooling="max", queries=15, inner_lr=0.05, inner_steps=5,
                     meta_batch=lambda a: 4 if a.shots == 1 else 2, meta_lr=1e-3, iterations=60_000,
                     test_steps=_per_step_or(10)),
        # MAML++'s released mini-ImageNet config: 48 filters, 2 tasks, inner 0.01, MSL over 15 epochs
        "maml++": dict(_MAML_PP, hidden=48, queries=15, meta_batch=2, inner_lr=0.01, msl_epochs=15),
    },
    "cifar-fs": {  # learn2learn's MAML reproductions: meta-batch 32, 1 step at 0.5, meta rate 0.003, K queries
        "maml": dict(_PLAIN, hidden=32, pooling="max", queries=_shots, inner_lr=0.5, inner_steps=1, meta_batch=32,
                     meta_lr=3e-3, iterations=60_000, test_steps=_per_step_or(1)),
    },
}
SETUPS["tiered-imagenet"] = SETUPS["mini-imagenet"]  # no setup of its own in the MAML papers: mini-ImageNet's
SETUPS["cifar-fs"]["maml++"] = SETUPS["mini-imagenet"]["maml++"]
SETUPS["fc100"] = SETUPS["cifar-fs"]


def resolve_defaults(a: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left at None from the data set's and the algorithm's setup (:data:`SETUPS`)."""
    for k, v in (("algorithm", "maml"), ("dataset", "omniglot"), ("model", "conv4"), ("epoch_iterations", 500)):
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.model == "resnet12" and getattr(a, "hidden", None) is None:
        a.hidden = 64
    setups = SETUPS.get(a.dataset, SETUPS["omniglot"])  # an unknown one is refused by validate
    for k, v in setups.get(a.algorithm, setups["maml"]).items():
        if getattr(a, k, None) is None:
            setattr(a, k, v(a) if callable(v) else v)
    if getattr(a, "cosine_iterations", None) is None:
        a.cosine_iterations = a.iterations
    if getattr(a, "data_dir", None) is None and a.dataset in DATASETS:
        a.data_dir = default_data_dir(a.dataset)
    if getattr(a, "out", None) is None:
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
    from metafast.data.registry import FEW_SHOT

    check_ints(a, TRAIN_INTS)
    dataset, model = getattr(a, "dataset", "omniglot"), getattr(a, "model", "conv4")
    if dataset not in DATASETS or model not in MODELS:
        raise CLIError(f"unknown data set {dataset!r} or model {model!r}: the data sets are {', '.join(DATASETS)}, "
                       f"the models {', '.join(MODELS)}")
    checks = [
        (dataset != "omniglot" or a.shots + a.queries <= 20,
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
    checks.append((model == "conv4" or FEW_SHOT[dataset].channels == 3,
                   f"--model resnet12 is for the RGB sets ({', '.join(d for d in DATASETS if d != 'omniglot')}); "
                   f"Omniglot trains Conv-4"))
    checks.append((model == "conv4" or not getattr(a, "per_step_bn", False),
                   "--per-step-bn (MAML++'s per-step batch norm) is Conv-4's; pass --no-per-step-bn with "
                   "--model resnet12"))
    for ok, msg in checks:
        if not ok:
            raise CLIError(msg)
    classes = FEW_SHOT[dataset].classes  # of the published splits (Omniglot: characters, x 4 rotations)
    split = min(classes, key=classes.get)
    limit = classes[split] * (4 if dataset == "omniglot" else 1)
    if a.ways > limit:
        raise CLIError(f"--ways {a.ways} exceeds the {limit} classes of the {DATASETS[dataset][0]} "
                       f"{'validation' if split == 'val' else split} split")


# the type of each argument a checkpoint stores that eval and --resume use
_STORED_TYPES = {**{k: int for k in ("ways", "shots", "queries", "inner_steps", "meta_batch", "hidden", "seed",
                                     "split_seed", "test_steps", "iterations", "val_every", "val_tasks",
                                     "test_tasks")},
                 "inner_lr": float, "meta_lr": float, "first_order": bool, "meta_sgd": bool, "anil": bool,
                 "algorithm": str, "lslr": bool, "per_step_bn": bool, "cosine_lr": bool, "pooling": str,
                 "msl_epochs": int, "first_order_epochs": int, "epoch_iterations": int, "cosine_iterations": int,
                 "backend": str, "data_dir": str, "cache_dir": (str, type(None)), "dataset": str, "model": str,
                 "allow_small_splits": bool}


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
