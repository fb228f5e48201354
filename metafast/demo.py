"""``python -m metafast demo``: the MAML paper's sinusoid regression, end to end.

Meta-trains the 1-40-40-1 ReLU network of Finn et al. (2017) with
:class:`metafast.BatchedMAML` (K = 10 support and 10 query points per task, one
inner SGD step at alpha = 0.01, 25 tasks per meta-batch, Adam at 1e-3), then
evaluates 600 held-out tasks at K = 5 shots after 1, 5 and 10 inner steps and
prints the mean squared error beside the paper's figures: for each step count,
how many tasks diverged (:data:`DIVERGED_MSE`), the mean with its 95% interval
over the others and the median over all.
It writes a plot (``sinusoid.png``), the results (``results.json``) and the
meta-learned weights (``model.pt``) to ``--out``.

The test tasks come from a fixed seed (:data:`TEST_SEED`) that does not depend
on ``--seed``, so every run is scored on the same 600 tasks.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

import metafast
from metafast._validate import argparse_type, positive_int, positive_number
from metafast.devices import resolve_device
from metafast.stats import mean_ci95, moving_average
from metafast.training import files
from metafast.training.args import INT_MAX, CLIError

#: Seed of the held-out test tasks; fixed, and never used for training.
TEST_SEED = 20_170_703
#: Iterations the MAML paper meta-trained the sinusoid model for.
PAPER_ITERATIONS = 70_000
#: Paper (appendix table), K = 5 test shots: MSE after 1 / 5 / 10 inner steps.
PAPER_MSE = {
    "maml": {"1": 0.67, "5": 0.38, "10": 0.35},
    "pretrained": {"1": 2.41, "5": 2.23, "10": 2.19},
}
EVAL_STEPS = (1, 5, 10)
DEFAULT_ITERATIONS = 10_000
#: A test task has diverged when its query MSE after adapting is non-finite or above this: eight
#: times the MSE of predicting 0 for the largest amplitude (A²/2 = 12.5). At alpha = 0.01 a few
#: tasks do diverge after several steps; the mean is taken over the others.
DIVERGED_MSE = 100.0

_POSITIVE_INT = argparse_type(positive_int, int)
_POSITIVE_FLOAT = argparse_type(positive_number, float)

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metafast demo",
        description=(
            "Meta-train the MAML paper's sinusoid regression model (1-40-40-1 ReLU, K=10, one inner "
            "step, meta-batch 25, Adam 1e-3) and evaluate 600 held-out tasks at K=5 shots after "
            "1, 5 and 10 inner steps, next to the paper's numbers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--iterations", type=_POSITIVE_INT, default=DEFAULT_ITERATIONS,
                   help=f"meta-training iterations (the paper used {PAPER_ITERATIONS:,})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run; auto picks cuda when a GPU is available")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and the training tasks")
    p.add_argument("--out", default=os.path.join(".", "runs", "demo"),
                   help="directory for sinusoid.png, results.json and model.pt")
    p.add_argument("--backend", choices=("auto", "torch", "fused"), default="auto",
                   help="metafast.BatchedMAML backend")
    p.add_argument("--first-order", action="store_true", help="first-order MAML (no second derivatives)")
    p.add_argument("--meta-batch", type=_POSITIVE_INT, default=25, help="tasks per meta-training iteration")
    p.add_argument("--inner-lr", type=_POSITIVE_FLOAT, default=0.01,
                   help="inner SGD step size, for meta-training and for test-time adaptation")
    p.add_argument("--meta-lr", type=_POSITIVE_FLOAT, default=1e-3, help="Adam learning rate of the meta-update")
    p.add_argument("--shots", type=_POSITIVE_INT, default=10, help="support points per task in meta-training")
    p.add_argument("--queries", type=_POSITIVE_INT, default=10, help="query points per task in meta-training")
    p.add_argument("--test-tasks", type=_POSITIVE_INT, default=600, help="held-out tasks to evaluate")
    p.add_argument("--test-shots", type=_POSITIVE_INT, default=5, help="support points per test task")
    p.add_argument("--threads", type=_POSITIVE_INT, default=None,
                   help="torch CPU threads (default 1 on the CPU: this network's ops are too small to share, "
                        "and extra threads only contend)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the pretrained (joint regression) baseline")
    p.add_argument("--no-plot", action="store_true", help="do not write sinusoid.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= INT_MAX:  # what torch.manual_seed takes, and a JSON-safe integer
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63-1], got {text}")
    return value


def _sample(tasks, num_tasks: int, shots: int, queries: int, generator: torch.Generator,
            device: torch.device):
    """Samples on the CPU with a CPU generator (reproducible on any device), then moves."""
    b = tasks.sample(num_tasks=num_tasks, shots=shots, queries=queries, generator=generator,
                     device="cpu", dtype=torch.float32)
    return {k: getattr(b, k).to(device) for k in
            ("support_x", "support_y", "query_x", "query_y", "amplitude", "phase")}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _median(values: torch.Tensor) -> float | None:
    """Median over all tasks, diverged ones counted as +inf; None when that is infinite."""
    v = torch.where(values.isfinite() & (values <= DIVERGED_MSE), values, math.inf).sort().values
    n = v.numel()
    m = ((v[(n - 1) // 2] + v[n // 2]) / 2).item()
    return m if math.isfinite(m) else None


def _mse_stats(query: torch.Tensor, support: torch.Tensor) -> dict:
    """Per-task MSEs -> how many tasks diverged, the mean (None if none is left) ± 95% interval
    (None below two tasks) over the rest, the median over all, and the median support MSE."""
    query, support = query.detach().double().cpu(), support.detach().double().cpu()
    ok = query.isfinite() & (query <= DIVERGED_MSE)
    s = mean_ci95(query[ok])
    return {"mse": s["mean"], "ci95": s["ci95"], "std": s["std"], "median": _median(query),
            "diverged": int((~ok).sum()), "tasks": query.numel(), "support_mse_median": _median(support)}


def _evaluate(meta, model: torch.nn.Module, test: dict, steps: Sequence[int]) -> tuple[dict, dict]:
    """Query MSE per task before adapting and after each number of inner steps.

    Returns (stats by steps as strings, adapted parameters by steps).
    """
    sx, sy, qx, qy = test["support_x"], test["support_y"], test["query_x"], test["query_y"]
    per_task = lambda out, y: ((out - y) ** 2).mean(dim=(1, 2))
    results, adapted = {}, {}
    with torch.no_grad():
        results["0"] = _mse_stats(per_task(model(qx), qy), per_task(model(sx), sy))
    for s in steps:
        with torch.no_grad():  # adapt() still differentiates the inner loss; it returns detached tensors
            params = meta.adapt(sx, sy, steps=s)
            params = {k: v.detach() for k, v in params.items()}
            # The support fit (training-set fit of the adapted models) must improve with every step.
            results[str(s)] = _mse_stats(per_task(meta.predict(params, qx), qy), per_task(meta.predict(params, sx), sy))
        adapted[s] = params
    return results, adapted


def _pretrain(model: torch.nn.Module, tasks, iterations: int, meta_batch: int, points: int, lr: float,
              generator: torch.Generator, device: torch.device, quiet: bool) -> float:
    """The paper's baseline: plain regression on points pooled from many tasks."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for _ in tqdm(range(iterations), desc="pretrain baseline", unit="it", disable=quiet,
                  mininterval=0.5, leave=False):
        b = _sample(tasks, meta_batch, points, 1, generator, device)
        loss = ((model(b["support_x"]) - b["support_y"]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def _fmt(value: float | None, spread: float | None = None) -> str:
    """"n/a" where there is no finite number to show (never a number computed from NaN)."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if spread is None else f"{value:.3f} ± {spread:.3f}"


def _table(rows: list[tuple[str, dict | None, dict]]) -> str:
    """Per model: mean ± 95% interval over the tasks that did not diverge, median over all
    tasks, and how many diverged; the paper's rows give its means."""
    header = ["", "", "before adapting", "1 step", "5 steps", "10 steps"]
    body = []
    for name, res, paper in rows:
        if res is None:
            body.append([name, "mean"] + ["-"] + [f"{paper[str(s)]:.2f}" for s in EVAL_STEPS])
            continue
        stats = [res[k] for k in ["0"] + [str(s) for s in EVAL_STEPS]]
        body.append([name, "mean ± 95%"] + [_fmt(r["mse"], r["ci95"]) for r in stats])
        body.append(["", "median"] + [_fmt(r["median"]) for r in stats])
        body.append(["", "diverged"] + [f"{r['diverged']}/{r['tasks']}" for r in stats])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    sep = "-" * len(line(header))
    return "\n".join([line(header), sep] + [line(r) for r in body])


def _plot(path: str, test: dict, model, meta, adapted: dict, curve_it, curve_loss, title: str,
          num_panels: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = min(num_panels, test["support_x"].shape[0])
    fig = plt.figure(figsize=(4.2 * n, 7.6), layout="constrained")
    gs = fig.add_gridspec(2, n, height_ratios=[1.25, 1.0])
    _plot_tasks(fig, gs, test, model, meta, adapted, n)
    _plot_curve(fig.add_subplot(gs[1, :]), curve_it, curve_loss, title)
    try:
        files.write_rendered(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


def _plot_tasks(fig, gs, test: dict, model, meta, adapted: dict, n: int) -> None:
    """The first ``n`` test tasks, one a panel on the top row of ``gs``: the true function, the support
    points and the predictions of the meta-learned init and after 1 and 10 steps."""
    device = test["support_x"].device
    grid = torch.linspace(X_RANGE[0], X_RANGE[1], 200, device=device)
    gx = grid.view(1, -1, 1).expand(n, -1, -1).contiguous()
    amp, phase = test["amplitude"][:n], test["phase"][:n]
    true = amp.view(-1, 1) * torch.sin(grid.view(1, -1) + phase.view(-1, 1))
    with torch.no_grad():
        p0 = model(gx)
        p1 = meta.predict({k: v[:n] for k, v in adapted[1].items()}, gx)
        p10 = meta.predict({k: v[:n] for k, v in adapted[10].items()}, gx)
    cpu = lambda t: t.detach().float().cpu().numpy()
    g = cpu(grid)
    for i in range(n):
        ax = fig.add_subplot(gs[0, i])
        ax.plot(g, cpu(true[i]), color="black", lw=2.2, label="true function")
        ax.plot(g, cpu(p0[i, :, 0]), color="0.55", ls="--", lw=1.6, label="meta-learned init")
        ax.plot(g, cpu(p1[i, :, 0]), color="tab:green", lw=1.6, label="after 1 step")
        ax.plot(g, cpu(p10[i, :, 0]), color="tab:blue", lw=1.6, label="after 10 steps")
        ax.scatter(cpu(test["support_x"][i, :, 0]), cpu(test["support_y"][i, :, 0]), color="tab:red",
                   marker="^", s=60, zorder=5, label=f"K={test['support_x'].shape[1]} support points")
        ax.set_title(f"test task {i}: A={amp[i].item():.2f}, φ={phase[i].item():.2f}", fontsize=10)
        ax.set_xlim(*X_RANGE)
        ax.set_ylim(-5.6, 5.6)
        ax.grid(alpha=0.3)
        ax.set_xlabel("x")
        if i == 0:
            ax.set_ylabel("y")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=5, frameon=False, fontsize=10)


def _plot_curve(ax, curve_it, curve_loss, title: str) -> None:
    """The meta-training curve (and its moving average) on ``ax``, log scale."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.plot(curve_it, curve_loss, color="tab:blue", alpha=0.25, lw=0.8, label="meta-batch query MSE")
    if len(curve_loss) >= 10:
        window = max(1, len(curve_loss) // 50)
        ax.plot(curve_it[window - 1:], moving_average(curve_loss, window), color="tab:blue", lw=2,
                label=f"moving average ({window} points)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("meta-training iteration")
    ax.set_ylabel("query MSE after inner adaptation")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper right")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m metafast demo``: returns the exit status (0 ok, 2 usage/device errors)."""
    threads = torch.get_num_threads()
    try:
        return _main(argv)
    except CLIError as exc:  # a write error (disk full), a bad --device, --out or --backend: one line
        print(f"metafast demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # the demo may lower it; leave callers (tests) as they were


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # tolerate `main(["demo", ...])`
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    _make_out(args.out)  # before training, so that a bad --out fails now rather than after the run
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    run = _Demo(args, device)
    run.meta_train()
    run.evaluate()
    run.report()
    run.write(argv)
    return 0


def _make_out(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        why = "it is a file" if os.path.isfile(out) else exc.strerror or exc
        raise CLIError(f"cannot use --out {out} as the output folder: {why}") from None


def _baseline_results(model: torch.nn.Module, inner_lr: float, test: dict) -> dict:
    """:func:`_evaluate` of a network fine-tuned from its own weights (first-order SGD, torch backend)."""
    meta = metafast.BatchedMAML(model, inner_lr=inner_lr, inner_steps=1, first_order=True, loss="mse",
                                backend="torch")
    return _evaluate(meta, model, test, EVAL_STEPS)[0]


class _Demo:
    """One run of the demo: the network and its meta-learner, the training losses and the test results."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        torch.manual_seed(args.seed)
        self.model = metafast.nn.MLP([1, 40, 40, 1], activation="relu").to(device)
        self.untrained = copy.deepcopy(self.model)
        try:
            self.meta = metafast.BatchedMAML(self.model, inner_lr=args.inner_lr, inner_steps=1,
                                             first_order=args.first_order, meta_sgd=False, loss="mse",
                                             backend=args.backend)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            raise CLIError(f"backend {args.backend!r} is not available: {exc}") from None
        self.tasks = metafast.data.Sinusoid(amplitude=AMPLITUDE, phase=PHASE, x_range=X_RANGE)
        self.order = "first-order" if args.first_order else "second-order"

    def meta_train(self) -> None:
        """--iterations meta-updates (Adam); the loss of each in ``losses`` (on the CPU), the time in ``train_s``."""
        from tqdm.auto import tqdm

        args, device = self.args, self.device
        opt = torch.optim.Adam(self.model.parameters(), lr=args.meta_lr)
        train_gen = torch.Generator().manual_seed(args.seed)
        print(f"metafast {metafast.__version__} demo: sinusoid regression, {self.order} MAML, device {device}"
              f"{f' ({torch.get_num_threads()} thread(s))' if device.type == 'cpu' else ''}, "
              f"backend {args.backend!r}")
        print(f"meta-training {args.iterations:,} iterations (the paper used {PAPER_ITERATIONS:,}): "
              f"K={args.shots} support + {args.queries} query points, 1 inner step at alpha={args.inner_lr:g}, "
              f"meta-batch {args.meta_batch}, Adam {args.meta_lr:g}")
        losses = torch.empty(args.iterations, device=device)
        start = time.perf_counter()
        bar = tqdm(range(args.iterations), desc="meta-train", unit="it", disable=args.quiet, mininterval=0.5,
                   dynamic_ncols=True)
        for i in bar:
            b = _sample(self.tasks, args.meta_batch, args.shots, args.queries, train_gen, device)
            out = self.meta(b["support_x"], b["support_y"], b["query_x"], b["query_y"])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            losses[i] = out.loss.detach()
            if (i + 1) % 100 == 0 or i + 1 == args.iterations:
                lo = max(0, i + 1 - 100)
                bar.set_postfix(loss=f"{losses[lo:i + 1].mean().item():.3f}", refresh=False)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.train_s = time.perf_counter() - start
        print(f"meta-training took {self.train_s:.1f} s ({args.iterations / self.train_s:,.0f} it/s) on backend "
              f"{self.meta.backend_used!r}")
        self.losses = losses.cpu()
        if not torch.isfinite(self.losses).all():
            print("metafast demo: warning: non-finite meta-training loss", file=sys.stderr)

    def evaluate(self) -> None:
        """The held-out tasks (``test``): MAML's results (``results``, and its adapted weights ``adapted``),
        the untrained init's and, unless --no-baseline, the pretrained baseline's."""
        args = self.args
        test_gen = torch.Generator().manual_seed(TEST_SEED)
        self.test = _sample(self.tasks, args.test_tasks, args.test_shots, 100, test_gen, self.device)
        maml, self.adapted = _evaluate(self.meta, self.model, self.test, EVAL_STEPS)
        self.results = {"maml": maml, "untrained": _baseline_results(self.untrained, args.inner_lr, self.test),
                        "pretrained": None, "pretrain_wall_s": None}
        if not args.no_baseline:
            pretrained = copy.deepcopy(self.untrained)
            self.results["pretrain_wall_s"] = _pretrain(
                pretrained, self.tasks, args.iterations, args.meta_batch, args.shots + args.queries, args.meta_lr,
                torch.Generator().manual_seed(args.seed), self.device, args.quiet)
            self.results["pretrained"] = _baseline_results(pretrained, args.inner_lr, self.test)

    def report(self) -> None:
        """The table of test MSEs beside the paper's."""
        args, r = self.args, self.results
        rows = [
            (f"MAML, this run ({args.iterations:,} it)", r["maml"], PAPER_MSE["maml"]),
            (f"MAML, paper ({PAPER_ITERATIONS:,} it)", None, PAPER_MSE["maml"]),
        ]
        if r["pretrained"] is not None:
            rows += [("pretrained, this run", r["pretrained"], PAPER_MSE["pretrained"]),
                     ("pretrained, paper", None, PAPER_MSE["pretrained"])]
        rows.append(("untrained init, this run", r["untrained"], {}))
        print()
        print(f"Test MSE on {args.test_tasks} held-out tasks, K={args.test_shots} shots, SGD alpha={args.inner_lr:g} "
              f"from the learned init (lower is better): mean ± 95% interval over the tasks that did not diverge, "
              f"median over all tasks, and how many diverged (query MSE non-finite or above {DIVERGED_MSE:g}):")
        print(_table(rows))
        if r["pretrained"] is not None:
            print(f"pretrained: the same network trained by plain regression on points pooled over tasks "
                  f"({args.iterations:,} Adam steps), then fine-tuned like MAML's init.")

    def write(self, argv: list[str]) -> None:
        """model.pt, sinusoid.png (or, with --no-plot, no earlier run's) and results.json in --out."""
        args = self.args
        paths = {"plot": os.path.join(args.out, "sinusoid.png"), "json": os.path.join(args.out, "results.json"),
                 "model": os.path.join(args.out, "model.pt")}
        files.save_torch(paths["model"], {k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        stride = max(1, args.iterations // 2000)
        curve = {"iteration": list(range(1, args.iterations + 1, stride)), "loss": self.losses[::stride].tolist()}
        if not args.no_plot:
            _plot(paths["plot"], self.test, self.model, self.meta, self.adapted, curve["iteration"], curve["loss"],
                  self._plot_title())
        else:  # a plot of an earlier run would sit beside this run's results
            files.remove_outputs([Path(paths["plot"])])
        # non-finite numbers as null, others as their str
        files.write_json(paths["json"], self._payload(argv, curve, paths))
        print()
        if not args.no_plot:
            print(f"wrote {paths['plot']}")
        print(f"wrote {paths['json']}")
        print(f"wrote {paths['model']}")

    def _plot_title(self) -> str:
        args, maml = self.args, self.results["maml"]
        return (f"meta-training: {self.order} MAML, {args.iterations:,} iterations, {self.train_s:.0f} s on "
                f"{self.device} ({self.meta.backend_used}); median test MSE K={args.test_shots}: "
                + ", ".join(f"{s} step{'s' if s > 1 else ''} {_fmt(maml[str(s)]['median'])}" for s in EVAL_STEPS))

    def _payload(self, argv: list[str], curve: dict, paths: dict) -> dict:
        """The contents of results.json."""
        args = self.args
        try:
            build = metafast.build_info()
        except Exception as exc:  # pragma: no cover - informational only
            build = {"error": repr(exc)}
        return {
            "demo": "sinusoid",
            "argv": argv,
            "config": {
                "iterations": args.iterations, "paper_iterations": PAPER_ITERATIONS, "seed": args.seed,
                "test_seed": TEST_SEED, "device": str(self.device), "backend": args.backend,
                "backend_used": self.meta.backend_used, "first_order": args.first_order,
                "meta_batch": args.meta_batch, "inner_lr": args.inner_lr, "meta_lr": args.meta_lr,
                "shots": args.shots, "queries": args.queries, "inner_steps_train": 1,
                "test_tasks": args.test_tasks, "test_shots": args.test_shots, "test_queries": 100,
                "threads": torch.get_num_threads(),
                "network": [1, 40, 40, 1], "amplitude": AMPLITUDE, "phase": PHASE, "x_range": X_RANGE,
            },
            "train": {
                "wall_s": self.train_s, "it_per_s": args.iterations / self.train_s,
                "final_loss_mean_last_100": _finite_or_none(self.losses[-100:].mean().item()),
                "loss_curve": curve,
            },
            "eval": {**self.results,
                     "definitions": {
                         "diverged": f"tasks whose query MSE is non-finite or above {DIVERGED_MSE:g}",
                         "mse, ci95, std": "mean, 95% interval (1.96 std / sqrt n) and std over the other tasks",
                         "median": "over all tasks, diverged ones counted as +inf (null if that is infinite)",
                         "support_mse_median": "median support-set MSE over all tasks, likewise"}},
            "paper": {"iterations": PAPER_ITERATIONS, **PAPER_MSE},
            "versions": {"metafast": metafast.__version__, "torch": torch.__version__,
                         "python": platform.python_version(), "build_info": build},
            "files": {"plot": None if args.no_plot else paths["plot"], "json": paths["json"], "model": paths["model"]},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
