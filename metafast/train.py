"""``python -m metafast train DATASET`` and ``python -m metafast eval CHECKPOINT``.

Meta-trains Conv-4 (or ResNet-12, ``--model resnet12``, on the RGB sets) on Omniglot,
mini-ImageNet, tiered-ImageNet, CIFAR-FS or FC100 with MAML (Finn et al., 2017), first-order
MAML, Meta-SGD, ANIL or MAML++, using :class:`metafast.BatchedMAML`, and evaluates it on the
meta-test classes beside the published figures.  The defaults are each data set's published
setup (:data:`metafast.training.args.SETUPS`), e.g. the MAML paper's for Omniglot:

* 5-way: 1 inner step, meta-batch 32, 3 inner steps at test;
  20-way: 5 inner steps (also at test), meta-batch 16;
* inner rate 2.0 on the mean cross-entropy, which is the paper's 0.4 (5-way)
  and 0.1 (20-way) on the authors' summed loss (N x mean);
* Adam with meta rate 1e-3, 60,000 iterations, K query images per class;
* 600 test tasks, accuracy with a 95% interval 1.96 std / sqrt(n);

and for mini-ImageNet (tiered-ImageNet too) 32 filters with max-pooling, 5 steps at 0.05
(the paper's 0.01 on N x mean), 10 at test, 15 queries, meta-batch 4 (1-shot) or 2;
for CIFAR-FS and FC100 learn2learn's: meta-batch 32, 1 step at 0.5, meta rate 0.003.

A run writes to ``--out``: ``checkpoint.pt`` (model, Meta-SGD rates, optimizer,
iteration, arguments, history, random state; ``--resume`` continues from it),
``curves.png`` (training curves) and ``results.json``, each replaced atomically; a new run in a
folder that holds another run's outputs needs ``--overwrite``, which deletes them first. Ctrl-C
(exit status 130) and SIGTERM (143: kill, timeout, Slurm, Docker) save the state
after the last completed iteration, so that an interrupted and resumed run is
bit-identical to an uninterrupted one; a non-finite meta-loss or meta-gradient
stops the run before it reaches the weights.

Under torchrun every meta-batch is split over the processes with DDP
(:mod:`metafast.distributed`); rank 0 alone writes, and the result equals one
process's up to the floating-point summation order.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from pathlib import Path

import torch

from metafast import distributed
from metafast.devices import resolve_device
from metafast.training import checkpoint, evaluation, files
from metafast.training.args import (DATASETS, EVAL_INTS, PER_MACHINE, CLIError, check_ints, default_data_dir,
                                    default_out, eval_parser, merge_resumed, resolve_defaults, run_command, setting,
                                    train_parser, validate)
from metafast.training.files import write_json
from metafast.training.plots import plot_curves
from metafast.training.results import eval_results, train_results, versions

__all__ = ["main_train", "main_eval"]


def main_train(argv) -> int:
    """``python -m metafast train DATASET [options]``; returns the exit code."""
    argv = list(argv)
    return run_command(train_parser(), argv, lambda a: _train(a, argv))


def main_eval(argv) -> int:
    """``python -m metafast eval CHECKPOINT [options]``; returns the exit code."""
    return run_command(eval_parser(), argv, _eval)


# --------------------------------------------------------------------------- data and model
def _load_split(data_dir: str, split: str, cache_dir, seed: int, device, quiet: bool, dataset: str = "omniglot",
                small: bool = False):
    """One split of ``dataset`` from the folder ``data_dir`` (``small``: accept splits smaller than the
    published ones); a missing or unreadable file is one line naming it and where to get it."""
    path = Path(data_dir).expanduser()
    if dataset != "omniglot":
        from metafast.data.registry import load_few_shot

        kw = {} if dataset in ("cifar-fs", "fc100") else {"cache_dir": cache_dir, "progress": not quiet}
        try:
            return load_few_shot(dataset, path, split, device=device, strict=not small, **kw)
        except ValueError as e:  # the published split sizes (strict)
            if "strict=False" not in str(e):
                raise
            raise CLIError(str(e).replace("pass strict=False", "pass --allow-small-splits")) from None
    from metafast.data.omniglot import Omniglot

    if not path.exists():
        raise CLIError(
            f"Omniglot data folder {path} does not exist. Pass --data-dir pointing at the folder that holds "
            f"images_background.zip and images_evaluation.zip (from https://github.com/brendenlake/omniglot, "
            f"folder python/)."
        )
    return Omniglot(path, split=split, cache_dir=cache_dir, seed=seed, device=device, progress=not quiet)


def _load(a, split: str, device, quiet: bool, data_dir: str | None = None, cache_dir=None):
    """:func:`_load_split` of run ``a``'s data set, checked to hold its tasks: ``--ways`` classes of
    ``--shots + --queries`` images (Omniglot: 20 drawings; the others: the smallest class)."""
    dataset = getattr(a, "dataset", "omniglot")
    ds = _load_split(data_dir or a.data_dir, split, a.cache_dir if cache_dir is None else cache_dir, a.split_seed,
                     device, quiet, dataset=dataset, small=getattr(a, "allow_small_splits", False))
    name = f"{DATASETS[dataset][0]} {split} split in {data_dir or a.data_dir}"
    classes, per_class = getattr(ds, "num_classes", None), getattr(ds, "images_per_class", None)
    if classes is not None and a.ways > classes:
        raise CLIError(f"--ways {a.ways} exceeds the {classes} classes of the {name}")
    if per_class is not None and a.shots + a.queries > per_class:
        raise CLIError(f"--shots + --queries = {a.shots + a.queries} exceeds the {per_class} images of the smallest "
                       f"class of the {name}")
    return ds


def _widths(hidden: int) -> tuple[int, int, int, int]:
    """ResNet-12's block widths from the first: 64 -> 64-160-320-640 (the wide layout)."""
    return hidden, 5 * hidden // 2, 5 * hidden, 10 * hidden


def _model_name(a) -> str:
    if getattr(a, "model", "conv4") == "resnet12":
        return f"ResNet-12 with {'-'.join(map(str, _widths(a.hidden)))} channels"
    return f"Conv-4 with {a.hidden} channels"


def _build(a, device: torch.device):
    from metafast.batched import BatchedMAML
    from metafast.data.registry import FEW_SHOT
    from metafast.nn.conv4 import Conv4
    from metafast.nn.resnet12 import ResNet12

    per_step_bn = getattr(a, "per_step_bn", False)  # runs saved before MAML++ lack its options: off
    channels = FEW_SHOT[getattr(a, "dataset", "omniglot")].channels
    if getattr(a, "model", "conv4") == "resnet12":
        model = ResNet12(a.ways, channels=_widths(a.hidden), in_channels=channels).to(device)
    else:
        model = Conv4(a.ways, hidden=a.hidden, in_channels=channels, pooling=getattr(a, "pooling", "stride"),
                      per_step_bn=a.inner_steps if per_step_bn else None).to(device)
    # MAML++ adapts the weights, not the (per-step) batch-norm parameters (the released configs)
    adapt = "head" if a.anil else [n for n, _ in model.named_parameters() if ".1." not in n] if per_step_bn else "all"
    meta = BatchedMAML(model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order,
                       meta_sgd=a.meta_sgd, loss="cross_entropy", backend=a.backend, adapt=adapt,
                       per_step_rates=getattr(a, "lslr", False), expected_iterations=a.iterations).to(device)
    return model, meta


def _schedule(a: argparse.Namespace, iteration: int, meta, opt):
    """MAML++'s schedules at ``iteration`` (pure functions of it, so a resumed run is
    bit-identical): the meta rate (cosine annealing), the derivative order
    (annealing) and the multi-step loss weights (None: the last step only)."""
    from metafast.training_schedules import cosine_meta_lr, first_order_at, msl_weights

    epoch = iteration // a.epoch_iterations
    if getattr(a, "cosine_lr", False):
        for group in opt.param_groups:
            group["lr"] = cosine_meta_lr(iteration, a.cosine_iterations, a.meta_lr, MIN_META_LR)
    meta.first_order = a.first_order or first_order_at(epoch, getattr(a, "first_order_epochs", 0))
    if getattr(a, "msl_epochs", 0) and epoch < a.msl_epochs:
        return msl_weights(a.inner_steps, epoch, a.msl_epochs)
    return None


# --------------------------------------------------------------------------- train
# what a run writes to --out (a new run there needs --overwrite, which removes them), and the
# temporary files a killed run may leave (files.write_bytes's; checkpoint.pt.tmp of earlier versions)
OUTPUTS = (checkpoint.NAME, "results.json", "curves.png")
MIN_META_LR = 1e-5  # MAML++'s cosine annealing ends here
LEFTOVERS = tuple(f".{name}.*.tmp" for name in OUTPUTS) + (checkpoint.NAME + ".tmp",)


def _new_history() -> dict:
    return {"iteration": [], "loss": [], "accuracy": [], "val_iteration": [], "val_accuracy": [], "val_ci95": []}


def _prepare(a: argparse.Namespace, argv: list[str], world_size: int) -> tuple[argparse.Namespace, dict | None]:
    """The output folder, the checkpoint to continue and the run's final arguments (rank 0's job)."""
    if a.out is None:
        a.out = default_out(a)
    out = Path(a.out).expanduser()
    files.check_out(out)
    ck_path = out / checkpoint.NAME
    ck = None
    if ck_path.exists() and a.resume:
        ck = checkpoint.load(ck_path)
        saved = ck["args"].get("dataset", "omniglot")
        if saved != a.dataset:
            raise CLIError(f"{ck_path} is a run on {saved}, not {a.dataset}: continue it with "
                           f"`train {saved} --resume`, or pass another --out")
        checkpoint.check_world_size(ck, world_size)
        ignored = merge_resumed(a, ck["args"], argv)
        if ignored:
            print(f"note: --resume keeps the run's settings; ignoring {', '.join(ignored)}", file=sys.stderr)
    elif ck_path.exists() and not a.overwrite:
        raise CLIError(f"{ck_path} exists: pass --resume to continue that run, --overwrite to start afresh, "
                       f"or another --out")
    elif a.resume:
        print(f"note: no checkpoint in {out}; starting a new run", file=sys.stderr)
    a = resolve_defaults(a)
    validate(a, world_size)
    if ck is not None and int(ck["iteration"]) > a.iterations:
        raise CLIError(f"the checkpoint is at iteration {int(ck['iteration'])}, beyond --iterations {a.iterations}")
    if ck is None:  # a new run: never beside another run's files
        files.start_afresh(out, a.overwrite, OUTPUTS, leftovers=LEFTOVERS)
    files.make_out(out)  # now, so that a bad --out fails before training, not after
    return a, ck


@contextlib.contextmanager
def _stdout_on_main_rank(ctx: distributed.Context):
    if ctx.is_main:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def _train(a: argparse.Namespace, argv: list[str]) -> int:
    if a.data_dir is None:  # here, on every machine: a path of its own (PER_MACHINE)
        a.data_dir = default_data_dir(a.dataset)
    with distributed.session(a.device) as ctx, _stdout_on_main_rank(ctx):
        ck = None
        with ctx.agreement():
            ctx.check_same({"--" + k.replace("_", "-"): v for k, v in vars(a).items() if k not in PER_MACHINE})
            if ctx.is_main:  # rank 0 reads the checkpoint: other machines need not see --out
                a, ck = _prepare(a, argv, ctx.world_size)
        own_paths = {k: getattr(a, k) for k in PER_MACHINE}
        a, ck = ctx.broadcast((a, ck))
        vars(a).update(own_paths)
        return _run(a, ck, ctx)


def _run(a: argparse.Namespace, ck: dict | None, ctx: distributed.Context) -> int:
    run = _Run(a, ck, ctx)
    if run.start < a.iterations:
        run.announce()
    stop = run.train()
    if stop:
        return run.save_interrupted(stop)
    run.finish()
    return 0


class _Run:
    """One rank's training run: its data, model, optimizer, generator, history and clock."""

    def __init__(self, a: argparse.Namespace, ck: dict | None, ctx: distributed.Context):
        self.a, self.ctx = a, ctx
        self.device, self.main = ctx.device, ctx.is_main
        self.out = Path(a.out).expanduser()
        self.ck_path = self.out / checkpoint.NAME
        # the first load writes the image cache
        self.train_ds, self.val_ds = ctx.first_on_each_machine(self._load_data)
        with ctx.agreement():
            self._init_state(ck)
        self.ddp = ctx.wrap(self.meta)
        self.share, self.weight = ctx.share(a.meta_batch), ctx.weight(a.meta_batch)
        self.mine = self.share.stop - self.share.start
        self.t0 = time.perf_counter()

    def _load_data(self):
        a, device = self.a, self.device
        return _load(a, "train", device, a.quiet or not self.main), _load(a, "val", device, True)

    def _init_state(self, ck: dict | None) -> None:
        """The seeded model, optimizer and generator of a new run, or those of checkpoint ``ck``."""
        a = self.a
        torch.manual_seed(a.seed)
        self.model, self.meta = _build(a, self.device)
        self.opt = torch.optim.Adam(self.meta.parameters(), lr=a.meta_lr)
        self.gen = torch.Generator().manual_seed(a.seed)
        self.history, self.start, self.elapsed = _new_history(), 0, 0.0
        if ck is not None:
            self._resume(ck)

    def _resume(self, ck: dict) -> None:
        checkpoint.restore(ck, self.a, self.meta, self.opt, self.gen)
        history, start = ck["history"], int(ck["iteration"])
        self.history, self.start, self.elapsed = history, start, float(ck.get("train_seconds", 0.0))
        if (not isinstance(history, dict) or set(history) != set(_new_history())
                or history["iteration"][-1:] != ([start] if start else [])):
            raise CLIError(f"checkpoint {self.ck_path} is inconsistent: its history does not end at its iteration "
                           f"{start}")
        print(f"resuming {setting(self.a)} from iteration {start} of {self.a.iterations} ({self.ck_path})")

    def announce(self) -> None:
        a, ctx = self.a, self.ctx
        split = ""
        if ctx.distributed:
            sizes = sorted({a.meta_batch // ctx.world_size, -(-a.meta_batch // ctx.world_size)})
            split = (f", split over {ctx.world_size} processes ({ctx.backend}) as "
                     f"{' or '.join(map(str, sizes))} tasks each")
        print(f"meta-training {setting(a)} on {DATASETS[a.dataset][0]} ({self.device}): {a.iterations} iterations, "
              f"meta-batch {a.meta_batch}{split}, {a.inner_steps} inner step(s) at rate {a.inner_lr}, "
              f"{_model_name(a)}; out: {self.out}")

    def save(self, iteration: int) -> None:
        with self.ctx.agreement():  # a write error on rank 0 (disk full) stops every rank, not rank 0 alone
            if self.main:
                checkpoint.save(self.ck_path, {
                    "format": checkpoint.FORMAT, "iteration": iteration, "args": vars(self.a),
                    "model": self.model.state_dict(), "meta": self.meta.state_dict(),
                    "optimizer": self.opt.state_dict(), "generator": self.gen.get_state(), "history": self.history,
                    "train_seconds": self.elapsed, "world_size": self.ctx.world_size, "versions": versions(),
                })

    def _validate_at(self, iteration: int) -> None:
        from tqdm.auto import tqdm

        a = self.a
        if a.val_tasks == 0:
            return
        r = evaluation.evaluate(self.meta, self.val_ds, a.val_tasks, a.ways, a.shots, a.queries, a.test_steps,
                                a.meta_batch, seed=evaluation.VAL_SEED, ctx=self.ctx)
        self.history["val_iteration"].append(iteration)
        self.history["val_accuracy"].append(r["accuracy"])
        self.history["val_ci95"].append(r["ci95"])
        tqdm.write(f"iteration {iteration}: validation accuracy {evaluation.fmt(r)} ({a.val_tasks} tasks, "
                   f"{a.test_steps} steps)")

    def _state(self) -> dict:
        """Everything an iteration changes: an interrupted iteration is rolled back to it."""
        return {"meta": {k: v.clone() for k, v in self.meta.state_dict().items()},
                "optimizer": copy.deepcopy(self.opt.state_dict()), "generator": self.gen.get_state(),
                "history": {k: len(v) for k, v in self.history.items()}}

    def _roll_back(self, saved: dict) -> None:
        self.meta.load_state_dict(saved["meta"])
        self.opt.load_state_dict(saved["optimizer"])
        self.gen.set_state(saved["generator"])
        for k, n in saved["history"].items():
            del self.history[k][n:]

    def train(self) -> int:
        """The iterations from ``start`` on; the exit status of a stop by Ctrl-C (130) or SIGTERM (143), else 0."""
        from tqdm.auto import tqdm

        a = self.a
        bar = tqdm(total=a.iterations, initial=self.start, desc="meta-train", unit="it",
                   disable=a.quiet or not self.main, dynamic_ncols=True)
        self.t0 = time.perf_counter()
        saved = self._state()
        stop = 0
        with self.ctx.deferred_interrupts() as signals:
            try:
                for it in range(self.start, a.iterations):
                    # Ctrl-C or SIGTERM can land anywhere (after the episode is drawn, mid opt.step(), before the
                    # history is updated): rolling back to the state before the iteration makes every stop
                    # resumable bit-identically.
                    saved = self._state()
                    seen = self._iteration(it, signals, bar)
                    if any(seen):  # every rank stops after this same iteration
                        stop = distributed.exit_status(seen)
                        break
            except KeyboardInterrupt as e:  # one process: Ctrl-C, or SIGTERM as distributed.Terminated
                self._roll_back(saved)
                stop = distributed.exit_status(e)
            late = signals()
        bar.close()
        if not stop and self.ctx.distributed:  # a signal after the last iteration's collective stops the run too
            seen = self.ctx.sum(torch.tensor(late, dtype=torch.float64)).tolist()
            stop = distributed.exit_status(seen) if any(seen) else 0
        return stop

    def _iteration(self, it: int, signals, bar) -> list[float]:
        """Meta-training iteration ``it`` (0-based); the signal flags seen by any rank."""
        a = self.a
        # every rank draws the whole meta-batch (the same generator state) and keeps its share
        episode = self.train_ds.sample(a.meta_batch, a.ways, a.shots, a.queries, generator=self.gen)
        o = self.ddp(*(t[self.share] for t in episode), step_weights=_schedule(a, it, self.meta, self.opt))
        self.opt.zero_grad(set_to_none=True)
        (o.loss if self.weight == 1 else o.loss * self.weight).backward()  # DDP averages the gradients over ranks
        loss, acc, failed, seen = self._reduce(o, signals)
        if failed:
            raise CLIError(f"at iteration {it + 1} the meta-loss ({loss:.4g}) or its gradient is not finite; "
                           f"stopped before updating the weights. Try a smaller --inner-lr or --meta-lr")
        self.opt.step()
        self._record(it + 1, loss, acc, bar)
        return seen

    def _reduce(self, o, signals) -> tuple[float, float, float, list[float]]:
        """The meta-batch's mean loss and accuracy, whether any rank's loss or meta-gradient is not finite,
        and the signal flags, in one collective (and one device sync) per iteration."""
        # A finite loss can hide NaN adapted weights; their meta-gradient cannot.
        grads = [p.grad for p in self.meta.parameters() if p.grad is not None]
        finite = torch.stack([t.detach().isfinite().all() for t in (o.loss, o.support_losses, *grads)]).all()
        sums = torch.stack([o.loss.detach().double() * self.mine, o.accuracy.detach().double() * self.mine,
                            (~finite).double()])
        local = torch.cat([sums, sums.new_tensor(signals())])
        loss_sum, acc_sum, failed, *seen = self.ctx.sum(local).tolist()
        return loss_sum / self.a.meta_batch, acc_sum / self.a.meta_batch, failed, seen

    def _record(self, done: int, loss: float, acc: float, bar) -> None:
        """The history and progress bar after ``done`` iterations; validation and checkpoint when due."""
        a = self.a
        self.history["iteration"].append(done)
        self.history["loss"].append(loss)
        self.history["accuracy"].append(acc)
        bar.update(1)
        if done % 10 == 0 or done == a.iterations:
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{100 * acc:.1f}%")
        if done % a.val_every == 0 or done == a.iterations:
            self.elapsed += time.perf_counter() - self.t0
            self.t0 = time.perf_counter()
            self._validate_at(done)
            self.save(done)
            self.t0 = time.perf_counter()

    def save_interrupted(self, stop: int) -> int:
        """Saves the last completed iteration of a stopped run; returns its exit status ``stop``."""
        done = self.history["iteration"][-1] if self.history["iteration"] else 0
        self.elapsed += time.perf_counter() - self.t0
        self.save(done)
        if self.main:
            print(f"\ninterrupted: saved iteration {done} to {self.ck_path}; continue with --resume", file=sys.stderr)
        return stop

    def finish(self) -> None:
        """The test accuracy (--test-tasks), curves.png and results.json."""
        if self.start < self.a.iterations:
            self.elapsed += time.perf_counter() - self.t0
        test = self._test() if self.a.test_tasks > 0 else None
        a, out = self.a, self.out
        with self.ctx.agreement():  # a write error on rank 0 is reported on every rank
            if self.main:
                title = f"{setting(a)} on {DATASETS[a.dataset][0]}, {_model_name(a)}"
                plot_curves(self.history, out / "curves.png", title)
                write_json(out / "results.json", train_results(a, self.history, self.elapsed, self.device,
                                                               self.meta.backend_used, self.ctx, test))
                print(f"wrote {self.ck_path}, {out / 'curves.png'}, {out / 'results.json'}")

    def _test(self) -> dict:
        a = self.a
        del self.train_ds
        test_ds = self.ctx.first_on_each_machine(lambda: _load(a, "test", self.device, True))
        test = evaluation.evaluate(self.meta, test_ds, a.test_tasks, a.ways, a.shots, a.queries, a.test_steps,
                                   a.meta_batch, quiet=a.quiet, desc="test", ctx=self.ctx)
        paper = evaluation.paper_line(a.ways, a.shots, a.meta_sgd, a.algorithm, a.dataset)
        print(f"test accuracy, {setting(a)}, {test['tasks']} tasks, {test['steps']} inner steps: "
              f"{evaluation.fmt(test)}   ({paper})")
        return test


# --------------------------------------------------------------------------- eval
def _eval(a: argparse.Namespace) -> int:
    check_ints(a, EVAL_INTS)
    ck = checkpoint.load(Path(a.checkpoint).expanduser())
    run = argparse.Namespace(**ck["args"])
    device = resolve_device(a.device)
    steps = a.test_steps if a.test_steps is not None else run.test_steps
    batch = a.meta_batch if a.meta_batch is not None else run.meta_batch
    data_dir = a.data_dir or run.data_dir
    cache_dir = a.cache_dir if a.cache_dir is not None else run.cache_dir
    ds = _load(run, a.split, device, a.quiet, data_dir=data_dir, cache_dir=cache_dir)
    _, meta = _build(run, device)
    checkpoint.restore(ck, run, meta)
    r = evaluation.evaluate(meta, ds, a.test_tasks, run.ways, run.shots, run.queries, steps, batch, seed=a.seed,
                            quiet=a.quiet, desc=a.split)
    paper = evaluation.paper_line(run.ways, run.shots, run.meta_sgd, getattr(run, "algorithm", "maml"),
                                  getattr(run, "dataset", "omniglot"))
    print(f"{a.split} accuracy, {setting(run)}, iteration {ck['iteration']}, {r['tasks']} tasks, "
          f"{steps} inner steps: {evaluation.fmt(r)}   ({paper})")
    if a.json:
        write_json(a.json, eval_results(str(a.checkpoint), ck, a.split, run, r))
    return 0


if __name__ == "__main__":  # python -m metafast.train [train] omniglot ... | eval CHECKPOINT ...
    _argv = sys.argv[1:]
    if _argv[:1] == ["eval"]:
        sys.exit(main_eval(_argv[1:]))
    sys.exit(main_train(_argv[1:] if _argv[:1] == ["train"] else _argv))
