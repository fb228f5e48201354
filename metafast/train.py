"""``python -m metafast train omniglot`` and ``python -m metafast eval CHECKPOINT``.

Meta-trains Conv-4 on Omniglot with MAML (Finn et al., 2017), first-order
MAML, Meta-SGD or ANIL, using :class:`metafast.BatchedMAML`, and evaluates it on
the meta-test characters.  The defaults reproduce the MAML paper's setup:

* 5-way: 1 inner step, meta-batch 32, 3 inner steps at test;
  20-way: 5 inner steps (also at test), meta-batch 16;
* inner rate 2.0 on the mean cross-entropy, which is the paper's 0.4 (5-way)
  and 0.1 (20-way) on the authors' summed loss (N x mean);
* Adam with meta rate 1e-3, 60,000 iterations, K query images per class;
* 600 test tasks, accuracy with a 95% interval 1.96 std / sqrt(n).

A run writes to ``--out``: ``checkpoint.pt`` (model, Meta-SGD rates, optimizer,
iteration, arguments, history, random state; ``--resume`` continues from it),
``curves.png`` (training curves) and ``results.json``. Ctrl-C saves the state
after the last completed iteration, so that an interrupted and resumed run is
bit-identical to an uninterrupted one; a non-finite meta-loss or meta-gradient
stops the run before it reaches the weights.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

__all__ = ["main_train", "main_eval", "PAPER_ACCURACY", "evaluate"]

#: MAML paper, Table 1 (Omniglot, convolutional MAML): accuracy % and 95% interval.
PAPER_ACCURACY = {(5, 1): (98.7, 0.4), (5, 5): (99.9, 0.1), (20, 1): (95.8, 0.3), (20, 5): (98.9, 0.2)}
#: Meta-SGD paper (Li et al., 2017), Omniglot accuracy %.
META_SGD_ACCURACY = {(5, 1): 99.53, (5, 5): 99.93, (20, 1): 95.93, (20, 5): 98.97}

CHECKPOINT = "checkpoint.pt"
FORMAT = "metafast-omniglot-v1"
_VAL_SEED = 1_000_003  # fixed episodes for validation and test, independent of --seed
_TEST_SEED = 2_000_003
# arguments that define the model and the training run; the rest may change on --resume
_STRUCTURAL = ("ways", "shots", "queries", "inner_steps", "inner_lr", "meta_batch", "meta_lr", "first_order",
               "meta_sgd", "anil", "hidden", "seed", "split_seed")
# arguments of this invocation only, never taken from the checkpoint
_SESSION = ("dataset", "out", "resume", "overwrite", "data_dir", "cache_dir", "device", "quiet", "iterations",
            "threads")
# what eval and --resume read from a checkpoint
_CHECKPOINT_KEYS = ("iteration", "args", "meta", "optimizer", "generator", "history")
_RUN_ARGS = _STRUCTURAL + ("backend", "test_steps", "data_dir", "cache_dir")


class CLIError(Exception):
    """A user error: printed as one message, exit code 1."""


# --------------------------------------------------------------------------- arguments
def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metafast train",
        description="Meta-train Conv-4 on Omniglot with MAML (defaults: the MAML paper's setup), then evaluate.",
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
    p.add_argument("--inner-lr", type=float, default=2.0,
                   help="inner rate on the mean cross-entropy (paper: 0.4 / 0.1 on N x mean)")
    p.add_argument("--meta-batch", type=int, default=None, help="tasks per meta-update (default 32; 16 if ways >= 20)")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--iterations", type=int, default=60_000, help="meta-training iterations")
    p.add_argument("--first-order", action="store_true", help="first-order MAML (no second derivatives)")
    p.add_argument("--meta-sgd", action="store_true", help="Meta-SGD: learn per-parameter inner rates")
    p.add_argument("--anil", action="store_true", help="ANIL: adapt only the linear head")
    p.add_argument("--hidden", type=int, default=64, help="conv channels")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "fused"], help="BatchedMAML backend")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
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


def _eval_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--seed", type=int, default=_TEST_SEED, help="seed of the test episodes")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true")
    return p


def _parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace | int:
    try:
        return parser.parse_args(list(argv))
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code) if isinstance(e.code, int) else 2


@contextlib.contextmanager
def _session(a: argparse.Namespace):
    """Thread count and warning filters for one command, restored afterwards."""
    threads = torch.get_num_threads()
    if a.threads is not None:
        if a.threads < 1:
            raise CLIError(f"--threads must be at least 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    try:
        with warnings.catch_warnings():
            # Conv-4 always runs on BatchedMAML's torch backend unless ANIL: no need to warn
            warnings.filterwarnings("ignore", message="BatchedMAML: using the torch backend", category=RuntimeWarning)
            yield
    finally:
        torch.set_num_threads(threads)


def _resolve_defaults(a: argparse.Namespace) -> argparse.Namespace:
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
        a.out = f"runs/omniglot-{a.ways}way-{a.shots}shot"
    return a


def _validate(a: argparse.Namespace) -> None:
    checks = [
        (a.ways >= 2, f"--ways must be at least 2, got {a.ways}"),
        (a.shots >= 1, f"--shots must be at least 1, got {a.shots}"),
        (a.queries >= 1, f"--queries must be at least 1, got {a.queries}"),
        (a.shots + a.queries <= 20,
         f"--shots + --queries = {a.shots + a.queries} exceeds the 20 drawings of an Omniglot character"),
        (a.inner_steps >= 1, f"--inner-steps must be at least 1, got {a.inner_steps}"),
        (a.test_steps >= 1, f"--test-steps must be at least 1, got {a.test_steps}"),
        (a.inner_lr > 0 and math.isfinite(a.inner_lr), f"--inner-lr must be positive, got {a.inner_lr}"),
        (a.meta_lr > 0 and math.isfinite(a.meta_lr), f"--meta-lr must be positive, got {a.meta_lr}"),
        (a.meta_batch >= 1, f"--meta-batch must be at least 1, got {a.meta_batch}"),
        (a.iterations >= 1, f"--iterations must be at least 1, got {a.iterations}"),
        (a.hidden >= 1, f"--hidden must be at least 1, got {a.hidden}"),
        (a.val_every >= 1, f"--val-every must be at least 1, got {a.val_every}"),
        (a.val_tasks >= 0 and a.test_tasks >= 0, "--val-tasks and --test-tasks must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise CLIError(msg)
    if a.ways > 400:  # the val split has 100 characters x 4 rotations
        raise CLIError(f"--ways {a.ways} exceeds the 400 classes of the validation split")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"--device {name!r} is not a device (expected cpu, cuda, cuda:N or auto)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {name}: only cpu and cuda are supported")
    return dev


def _load_split(data_dir: str, split: str, cache_dir, seed: int, device, quiet: bool):
    from metafast.data.omniglot import Omniglot

    path = Path(data_dir).expanduser()
    if not path.exists():
        raise CLIError(
            f"Omniglot data folder {path} does not exist. Pass --data-dir pointing at the folder that holds "
            f"images_background.zip and images_evaluation.zip (from https://github.com/brendenlake/omniglot, "
            f"folder python/)."
        )
    return Omniglot(path, split=split, cache_dir=cache_dir, seed=seed, device=device, progress=not quiet)


# --------------------------------------------------------------------------- model and evaluation
def _build(a, device: torch.device):
    from metafast.batched import BatchedMAML
    from metafast.nn.conv4 import Conv4

    model = Conv4(a.ways, hidden=a.hidden).to(device)
    meta = BatchedMAML(model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order,
                       meta_sgd=a.meta_sgd, loss="cross_entropy", backend=a.backend,
                       adapt="head" if a.anil else "all").to(device)
    return model, meta


def evaluate(meta, dataset, tasks: int, ways: int, shots: int, queries: int, steps: int, batch: int,
             seed: int = _TEST_SEED, quiet: bool = True, desc: str = "eval") -> dict:
    """Mean query accuracy over ``tasks`` tasks with ``steps`` inner steps, and its 95% interval.
    A query whose logits are not all finite counts as wrong (argmax of NaN means nothing)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    accs, nonfinite = [], []
    with tqdm(total=tasks, desc=desc, disable=quiet, leave=False, unit="task") as bar:
        done = 0
        while done < tasks:
            b = min(batch, tasks - done)
            sx, sy, qx, qy = dataset.sample(b, ways, shots, queries, generator=g)
            with torch.no_grad():
                params = meta.adapt(sx, sy, steps=steps)
                logits = meta.predict(params, qx)
            finite = logits.isfinite().all(-1)
            accs.append(((logits.argmax(-1) == qy) & finite).double().mean(1).cpu())
            nonfinite.append((~finite).any(1).cpu())
            done += b
            bar.update(b)
    acc = torch.cat(accs) if accs else torch.zeros(0, dtype=torch.float64)
    n = acc.numel()
    mean = acc.mean().item() if n else float("nan")
    ci = 1.96 * acc.std(unbiased=False).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"accuracy": 100 * mean, "ci95": 100 * ci, "tasks": n, "steps": steps,
            "nonfinite_tasks": int(torch.cat(nonfinite).sum()) if nonfinite else 0}


def _paper_line(ways: int, shots: int, meta_sgd: bool) -> str:
    ref = PAPER_ACCURACY.get((ways, shots))
    s = f"MAML paper: {ref[0]:.1f} ± {ref[1]:.1f} %" if ref else "MAML paper: no figure for this setting"
    if meta_sgd and (ways, shots) in META_SGD_ACCURACY:
        s += f"; Meta-SGD paper: {META_SGD_ACCURACY[(ways, shots)]:.2f} %"
    return s


def _fmt(r: dict) -> str:
    bad = r.get("nonfinite_tasks", 0)
    return f"{r['accuracy']:.2f} ± {r['ci95']:.2f} %" + (f" ({bad} tasks with non-finite logits)" if bad else "")


# --------------------------------------------------------------------------- checkpoints and outputs
def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict:
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CLIError(f"checkpoint {path} does not exist (a run writes {CHECKPOINT} in its --out folder)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"cannot read checkpoint {path}: the file is corrupt, truncated or not a checkpoint "
                       f"({type(e).__name__})") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CLIError(f"{path} is not a metafast Omniglot checkpoint (format {FORMAT})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ck]
    if not missing:
        args = ck["args"] if isinstance(ck["args"], dict) else {}
        missing = [f"args.{k}" for k in _RUN_ARGS if k not in args]
    if missing:
        raise CLIError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}")
    ck["path"] = path
    return ck


def _restore(ck: dict, a: argparse.Namespace, meta, opt=None, gen=None) -> None:
    """Load a checkpoint's states; a mismatch with its own arguments is a CLIError."""
    try:
        meta.load_state_dict(ck["meta"])
        if opt is not None:
            opt.load_state_dict(ck["optimizer"])
        if gen is not None:
            gen.set_state(ck["generator"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."  # state_dict errors list every key
        raise CLIError(f"checkpoint {ck['path']} does not fit the run its arguments describe ({_setting(a)}, "
                       f"{a.hidden} channels): {detail}") from e


def _plot(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    it = history["iteration"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))

    def smooth(v):
        w = max(1, len(v) // 100)
        if w == 1:
            return it, v
        out = [sum(v[i:i + w]) / w for i in range(0, len(v) - w + 1, w)]
        return [it[i + w - 1] for i in range(0, len(v) - w + 1, w)], out

    if it:
        ax1.plot(*smooth(history["loss"]), label="meta-train query loss")
        ax2.plot(*smooth([100 * a for a in history["accuracy"]]), label="meta-train query accuracy")
    if history["val_iteration"]:
        ax2.plot(history["val_iteration"], history["val_accuracy"], "o-", label="validation accuracy")
    ax1.set(xlabel="iteration", ylabel="cross-entropy", title="loss")
    ax2.set(xlabel="iteration", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _setting(a) -> str:
    algo = "ANIL" if a.anil else "Meta-SGD" if a.meta_sgd else "MAML"
    order = "first-order " if a.first_order else ""
    return f"{order}{algo}, {a.ways}-way {a.shots}-shot"


def _versions() -> dict:
    try:
        import metafast

        mf = getattr(metafast, "__version__", "unknown")
    except Exception:  # pragma: no cover
        mf = "unknown"
    return {"torch": str(torch.__version__), "metafast": str(mf)}


# --------------------------------------------------------------------------- train
def _run_command(parser: argparse.ArgumentParser, argv, command) -> int:
    """Parse, run ``command(args)`` in a session; user errors become one line and exit code 1."""
    a = _parse(parser, argv)
    if isinstance(a, int):
        return a
    try:
        with _session(a):
            return command(a)
    except (CLIError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line
        return 1


def main_train(argv) -> int:
    """``python -m metafast train omniglot [options]``; returns the exit code."""
    return _run_command(_train_parser(), argv, lambda a: _train(a, list(argv)))


def _given(argv: list[str], dest: str) -> bool:
    flag = "--" + dest.replace("_", "-")
    return any(x == flag or x.startswith(flag + "=") for x in argv)


def _make_folder(out: Path) -> None:
    """Create the output folder before the run, so that a bad --out fails now, not after training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the output folder {out}: {e.strerror or e}") from e


def _new_history() -> dict:
    return {"iteration": [], "loss": [], "accuracy": [], "val_iteration": [], "val_accuracy": [], "val_ci95": []}


def _all_finite(tensors) -> bool:
    """One device sync for a whole list."""
    return bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all())


def _train(a: argparse.Namespace, argv: list[str]) -> int:
    from tqdm.auto import tqdm

    if a.out is None:
        a.out = f"runs/omniglot-{a.ways}way-{a.shots}shot"
    out = Path(a.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder; pass a folder for the run's outputs")
    ck_path = out / CHECKPOINT
    ck = None
    if ck_path.exists() and a.resume:
        ck = _load_checkpoint(ck_path)
        saved = ck["args"]
        ignored = []
        for k, v in saved.items():
            if k in _SESSION or not hasattr(a, k):
                continue
            given = _given(argv, k)
            if k in _STRUCTURAL:  # the run's own settings win
                if given and getattr(a, k) != v:
                    ignored.append(f"--{k.replace('_', '-')}")
                setattr(a, k, v)
            elif not given:  # e.g. --test-steps, --val-every: the run's unless given again
                setattr(a, k, v)
        if ignored:
            print(f"note: --resume keeps the run's settings; ignoring {', '.join(ignored)}", file=sys.stderr)
    elif ck_path.exists() and not a.overwrite:
        raise CLIError(f"{ck_path} exists: pass --resume to continue that run, --overwrite to start afresh, "
                       f"or another --out")
    elif a.resume:
        print(f"note: no checkpoint in {out}; starting a new run", file=sys.stderr)
    a = _resolve_defaults(a)
    _validate(a)
    if ck is not None and int(ck["iteration"]) > a.iterations:
        raise CLIError(f"the checkpoint is at iteration {int(ck['iteration'])}, beyond --iterations {a.iterations}")
    device = _device(a.device)
    _make_folder(out)

    train_ds = _load_split(a.data_dir, "train", a.cache_dir, a.split_seed, device, a.quiet)
    val_ds = _load_split(a.data_dir, "val", a.cache_dir, a.split_seed, device, True)
    if a.ways > train_ds.num_classes:
        raise CLIError(f"--ways {a.ways} exceeds the {train_ds.num_classes} training classes")

    torch.manual_seed(a.seed)
    model, meta = _build(a, device)
    opt = torch.optim.Adam(meta.parameters(), lr=a.meta_lr)
    gen = torch.Generator().manual_seed(a.seed)
    history = _new_history()
    start, elapsed = 0, 0.0
    if ck is not None:
        _restore(ck, a, meta, opt, gen)
        history, start, elapsed = ck["history"], int(ck["iteration"]), float(ck.get("train_seconds", 0.0))
        if (not isinstance(history, dict) or set(history) != set(_new_history())
                or history["iteration"][-1:] != ([start] if start else [])):
            raise CLIError(f"checkpoint {ck_path} is inconsistent: its history does not end at its iteration {start}")
        print(f"resuming {_setting(a)} from iteration {start} of {a.iterations} ({ck_path})")

    def checkpoint(iteration: int) -> None:
        _save_checkpoint(ck_path, {
            "format": FORMAT, "iteration": iteration, "args": vars(a), "model": model.state_dict(),
            "meta": meta.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "history": history, "train_seconds": elapsed, "versions": _versions(),
        })

    def validate(iteration: int) -> None:
        if a.val_tasks == 0:
            return
        r = evaluate(meta, val_ds, a.val_tasks, a.ways, a.shots, a.queries, a.test_steps, a.meta_batch,
                     seed=_VAL_SEED)
        history["val_iteration"].append(iteration)
        history["val_accuracy"].append(r["accuracy"])
        history["val_ci95"].append(r["ci95"])
        tqdm.write(f"iteration {iteration}: validation accuracy {_fmt(r)} ({a.val_tasks} tasks, "
                   f"{a.test_steps} steps)")

    if start < a.iterations:
        print(f"meta-training {_setting(a)} on {device}: {a.iterations} iterations, meta-batch {a.meta_batch}, "
              f"{a.inner_steps} inner step(s) at rate {a.inner_lr}, Conv-4 with {a.hidden} channels; out: {out}")

    def state() -> dict:
        """Everything an iteration changes: an interrupted iteration is rolled back to it."""
        return {"meta": {k: v.clone() for k, v in meta.state_dict().items()},
                "optimizer": copy.deepcopy(opt.state_dict()), "generator": gen.get_state(),
                "history": {k: len(v) for k, v in history.items()}}

    def roll_back(saved: dict) -> None:
        meta.load_state_dict(saved["meta"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        for k, n in saved["history"].items():
            del history[k][n:]

    bar = tqdm(total=a.iterations, initial=start, desc="meta-train", unit="it", disable=a.quiet, dynamic_ncols=True)
    t0 = time.perf_counter()
    saved = state()
    try:
        for it in range(start, a.iterations):
            # Ctrl-C can land anywhere (after the episode is drawn, mid opt.step(), before the history
            # is updated): rolling back to the state before the iteration makes every stop resumable
            # bit-identically.
            saved = state()
            sx, sy, qx, qy = train_ds.sample(a.meta_batch, a.ways, a.shots, a.queries, generator=gen)
            o = meta(sx, sy, qx, qy)
            opt.zero_grad(set_to_none=True)
            o.loss.backward()
            # A finite loss can hide NaN adapted weights; their meta-gradient cannot.
            grads = [p.grad for p in meta.parameters() if p.grad is not None]
            if not _all_finite([o.loss, o.support_losses, *grads]):
                raise CLIError(f"at iteration {it + 1} the meta-loss ({o.loss.item():.4g}) or its gradient is not "
                               f"finite; stopped before updating the weights. Try a smaller --inner-lr or --meta-lr")
            opt.step()
            loss, acc = o.loss.item(), o.accuracy.item()
            history["iteration"].append(it + 1)
            history["loss"].append(loss)
            history["accuracy"].append(acc)
            bar.update(1)
            if (it + 1) % 10 == 0 or it + 1 == a.iterations:
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{100 * acc:.1f}%")
            if (it + 1) % a.val_every == 0 or it + 1 == a.iterations:
                elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                validate(it + 1)
                checkpoint(it + 1)
                t0 = time.perf_counter()
    except KeyboardInterrupt:
        bar.close()
        roll_back(saved)
        done = history["iteration"][-1] if history["iteration"] else 0
        elapsed += time.perf_counter() - t0
        checkpoint(done)
        print(f"\ninterrupted: saved iteration {done} to {ck_path}; continue with --resume", file=sys.stderr)
        return 130
    bar.close()
    if start < a.iterations:
        elapsed += time.perf_counter() - t0

    title = f"{_setting(a)} on Omniglot, Conv-4 ({a.hidden} channels)"
    _plot(history, out / "curves.png", title)
    results = {
        "setting": _setting(a), "dataset": "omniglot", "args": vars(a), "iterations": a.iterations,
        "train_seconds": elapsed,
        "iterations_per_second": (len(history["iteration"]) / elapsed) if elapsed > 0 else None,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "backend_used": meta.backend_used, "versions": _versions(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "final_train_accuracy": (100 * sum(history["accuracy"][-100:]) / len(history["accuracy"][-100:])
                                 if history["accuracy"] else None),
        "validation": [{"iteration": i, "accuracy": v, "ci95": c} for i, v, c in
                       zip(history["val_iteration"], history["val_accuracy"], history["val_ci95"])],
        "paper": {"maml": PAPER_ACCURACY.get((a.ways, a.shots)),
                  "meta_sgd": META_SGD_ACCURACY.get((a.ways, a.shots))},
        "test": None,
    }
    if a.test_tasks > 0:
        del train_ds
        test_ds = _load_split(a.data_dir, "test", a.cache_dir, a.split_seed, device, True)
        r = evaluate(meta, test_ds, a.test_tasks, a.ways, a.shots, a.queries, a.test_steps, a.meta_batch,
                     quiet=a.quiet, desc="test")
        results["test"] = r
        print(f"test accuracy, {_setting(a)}, {r['tasks']} tasks, {r['steps']} inner steps: {_fmt(r)}   "
              f"({_paper_line(a.ways, a.shots, a.meta_sgd)})")
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {ck_path}, {out / 'curves.png'}, {out / 'results.json'}")
    return 0


# --------------------------------------------------------------------------- eval
def main_eval(argv) -> int:
    """``python -m metafast eval CHECKPOINT [options]``; returns the exit code."""
    return _run_command(_eval_parser(), argv, _eval)


def _eval(a: argparse.Namespace) -> int:
    ck = _load_checkpoint(Path(a.checkpoint).expanduser())
    run = argparse.Namespace(**ck["args"])
    device = _device(a.device)
    if a.test_tasks < 1:
        raise CLIError(f"--test-tasks must be at least 1, got {a.test_tasks}")
    steps = a.test_steps if a.test_steps is not None else run.test_steps
    if steps < 1:
        raise CLIError(f"--test-steps must be at least 1, got {steps}")
    batch = a.meta_batch or run.meta_batch
    data_dir = a.data_dir or run.data_dir
    cache_dir = a.cache_dir if a.cache_dir is not None else run.cache_dir
    ds = _load_split(data_dir, a.split, cache_dir, run.split_seed, device, a.quiet)
    _, meta = _build(run, device)
    _restore(ck, run, meta)
    r = evaluate(meta, ds, a.test_tasks, run.ways, run.shots, run.queries, steps, batch, seed=a.seed,
                 quiet=a.quiet, desc=a.split)
    print(f"{a.split} accuracy, {_setting(run)}, iteration {ck['iteration']}, {r['tasks']} tasks, "
          f"{steps} inner steps: {_fmt(r)}   ({_paper_line(run.ways, run.shots, run.meta_sgd)})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"checkpoint": str(a.checkpoint), "iteration": ck["iteration"], "split": a.split,
                       "setting": _setting(run), **r, "paper": PAPER_ACCURACY.get((run.ways, run.shots))},
                      f, indent=2)
    return 0


if __name__ == "__main__":  # python -m metafast.train [train] omniglot ... | eval CHECKPOINT ...
    _argv = sys.argv[1:]
    if _argv[:1] == ["eval"]:
        sys.exit(main_eval(_argv[1:]))
    sys.exit(main_train(_argv[1:] if _argv[:1] == ["train"] else _argv))
