"""Exact data-parallel meta-training on torch.distributed (torchrun, DDP).

One process (rank) per GPU with NCCL, or per CPU worker with gloo. N ranks compute
what one process computes on the whole meta-batch:

* every rank draws the whole meta-batch from the same seeded generator and keeps its
  share of the tasks (:meth:`Context.share`): the union over ranks is the meta-batch
  of one process, and every rank's generator stays in step;
* DDP averages the gradients over ranks; :meth:`Context.weight` scales a rank's mean
  loss so that this average is the mean over all tasks, also when the shares differ
  by one task;
* weights, optimizer and generator are replicated, so rank 0's checkpoint restores
  every rank.

Only the floating-point summation order differs from one process (one partial sum
per rank). DDP needs a meta-gradient that is one ordinary backward, which
:class:`metafast.BatchedMAML` gives at second order too. For the learn2learn-style
``MAML.clone()`` / ``adapt()`` loop (a double backward DDP cannot hook into), call
:func:`all_reduce_gradients` after ``backward()`` instead of wrapping in DDP.
"""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from metafast.devices import resolve_device

__all__ = ["Context", "SetupError", "Terminated", "exit_status", "session", "launched", "env_rank",
           "all_reduce_gradients", "broadcast_parameters", "spawn"]


class SetupError(ValueError):
    """A user error raised alike on every rank (rank 0 reports it)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, Slurm, Docker) in one process, raised where it lands as Ctrl-C's
    KeyboardInterrupt is, so that the handler that saves an interrupted run saves this one too."""


def exit_status(stop) -> int:
    """The conventional exit status, 128 + the signal number, of a run stopped by ``stop``: a
    KeyboardInterrupt (:class:`Terminated` for SIGTERM), or the flags [SIGINT seen, SIGTERM seen]
    of :meth:`Context.deferred_interrupts`, summed over ranks (SIGTERM wins: the job is ending)."""
    term = isinstance(stop, Terminated) if isinstance(stop, BaseException) else stop[1] > 0
    return 128 + int(signal.SIGTERM if term else signal.SIGINT)


def launched() -> bool:
    """Started by torchrun (or :func:`spawn`): its rank variables are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Context:
    """This process's place in the job; a single process is rank 0 of 1 with ``backend=None``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # "gloo" or "nccl" when distributed

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -------------------------------------------------------------- splitting a meta-batch
    def share(self, tasks: int) -> slice:
        """This rank's contiguous block of ``tasks`` tasks; block sizes differ by at most one."""
        return slice(tasks * self.rank // self.world_size, tasks * (self.rank + 1) // self.world_size)

    def weight(self, tasks: int) -> float:
        """Factor for this rank's mean loss over its share such that DDP's average over ranks is
        the mean over all ``tasks`` tasks (1.0 when the shares are equal)."""
        s = self.share(tasks)
        return self.world_size * (s.stop - s.start) / tasks

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around ``module`` when distributed (one GPU per rank), else the module itself. Keep
        the wrapper while training: its gradient hooks go with it."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    # -------------------------------------------------------------- collectives (no-ops in one process)
    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks, on ``t``'s device."""
        if not self.distributed:
            return t
        x = t.to(self.device, copy=True)
        dist.all_reduce(x)
        return x.to(t.device)

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def agreement(self):
        """Run a block on every rank; a user error (ValueError, OSError) on any rank is then
        raised on all of them as a :class:`SetupError`, so that no rank waits for one that quit."""
        if not self.distributed:
            yield
            return
        error = None
        try:
            yield
        except (ValueError, OSError) as e:
            error = e
        messages = self.gather(None if error is None else " ".join(str(error).split()))
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            r, msg = failed[0]
            same = all(m == msg for _, m in failed) and len(failed) == self.world_size
            raise SetupError(msg if r == 0 or same else f"rank {r}: {msg}") from error

    def check_same(self, values: dict, what: str = "arguments") -> None:
        """Raise on every rank if any rank's ``values`` differ from rank 0's."""
        ref, diffs = None, []
        for r, v in enumerate(self.gather(values)):
            if ref is None:
                ref = v
                continue
            diffs += [f"{k} is {ref.get(k)!r} on rank 0 but {v.get(k)!r} on rank {r}"
                      for k in sorted(set(ref) | set(v)) if ref.get(k) != v.get(k)]
        if diffs:
            raise SetupError(f"the ranks were started with different {what} ({'; '.join(diffs[:4])}"
                             f"{' ...' if len(diffs) > 4 else ''}); start every rank with the same command line")

    def first_on_each_machine(self, fn: Callable):
        """``fn()`` on local rank 0 of every machine, then on the other ranks (so that one process
        writes a cache that the others read); errors are agreed."""
        result = None
        for leader_turn in (True, False):
            with self.agreement():
                if (self.local_rank == 0) == leader_turn:
                    result = fn()
        return result

    @contextlib.contextmanager
    def deferred_interrupts(self) -> Iterator[Callable[[], list[float]]]:
        """Ctrl-C (SIGINT) and SIGTERM in the block. Distributed, they only set flags, which the
        caller shares with the other ranks at its next collective, so that all ranks stop after the
        same iteration (torchrun delivers either signal to every rank at different points of their
        work: SIGINT from the terminal and again from its agent, SIGTERM from its agent when it is
        itself terminated). In one process SIGINT raises KeyboardInterrupt as always and SIGTERM
        raises :class:`Terminated`. Yields a function that returns the flags [SIGINT seen, SIGTERM
        seen] as 0.0 / 1.0 (always zeros in one process). Off the main thread nothing changes."""
        seen = {signal.SIGINT: 0.0, signal.SIGTERM: 0.0}
        if threading.current_thread() is not threading.main_thread():
            yield lambda: [0.0, 0.0]
            return

        def defer(signum, frame):
            seen[signum] = 1.0

        def terminate(signum, frame):
            raise Terminated()

        handlers = {signal.SIGINT: defer, signal.SIGTERM: defer} if self.distributed else {signal.SIGTERM: terminate}
        previous = {s: signal.signal(s, h) for s, h in handlers.items()}
        try:
            yield lambda: [seen[signal.SIGINT], seen[signal.SIGTERM]]
        finally:
            for s, h in previous.items():  # None: a handler not set from Python, i.e. the default
                signal.signal(s, signal.SIG_DFL if h is None else h)


def _device_for_rank(name: str, local_rank: int) -> torch.device:
    """cpu, or this rank's own GPU: torchrun starts one process per GPU, local rank r uses cuda:r."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.index is not None:
        if local_world > 1:
            raise ValueError(f"--device {name}: with {local_world} processes on this machine each needs its own "
                             f"GPU; pass --device cuda (or auto) and local rank r uses cuda:r")
        return device
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                         f"start at most that many processes per machine (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Context]:
    """This process's :class:`Context`. Under torchrun (its RANK / WORLD_SIZE / LOCAL_RANK /
    MASTER_ADDR / MASTER_PORT variables) it joins the process group, NCCL for GPUs and gloo for
    CPUs, and leaves it at the end; an existing process group is used as it is."""
    if not launched() and not dist.is_initialized():
        yield Context(device=resolve_device(device))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device_for_rank(device, local_rank)
    owned = not dist.is_initialized()
    if owned:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    together = False  # whether every rank leaves the block at the same point
    try:
        yield Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
                      backend=str(dist.get_backend()))
        together = True
    except SetupError:  # agreed: raised on every rank at the same collective
        together = True
        raise
    finally:
        if owned:
            _leave(together)


def _leave(together: bool) -> None:
    """Leave the process group in order, on every exit path. When all ranks got here together, a
    barrier first: no rank tears down its connections while another still works or writes (rank 0
    writes the results while the others would already be leaving). Then the objects that hold the
    group (DDP's reducer sits in reference cycles) are collected while the interpreter is fully
    alive: a gloo group destroyed during interpreter shutdown, with its worker threads still
    joinable, aborts the process ("terminate called without an active exception")."""
    try:
        if together:
            dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


# ------------------------------------------------------------------ the learn2learn-style API
def _params(module_or_params) -> list[torch.Tensor]:
    if isinstance(module_or_params, nn.Module):
        return [p for p in module_or_params.parameters() if p.requires_grad]
    return [p for p in module_or_params if p.requires_grad]


def all_reduce_gradients(module_or_params: nn.Module | Iterable[torch.Tensor], average: bool = True) -> None:
    """After ``backward()``: replace every parameter's ``.grad`` by its sum over ranks, divided by
    the number of ranks when ``average`` (the mean of per-rank mean losses over equal shares).
    With ``average=False`` and each rank's loss summed over its tasks and divided by the size of
    the whole meta-batch, the result is the one-process meta-gradient for any split.
    One collective for all parameters; a parameter without a gradient on every rank keeps
    ``None`` (as in one process), otherwise missing gradients count as zeros. No-op in one process."""
    if not dist.is_initialized():
        return
    params = _params(module_or_params)
    if not params:
        return
    world = dist.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    present = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([present] + [g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    if average:
        flat[len(params):] /= world
    offset = len(params)
    for p, has_grad in zip(params, flat[:len(params)].tolist()):
        n = p.numel()
        p.grad = flat[offset: offset + n].view_as(p) if has_grad else None
        offset += n


def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (the same start everywhere)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


# ------------------------------------------------------------------ local launcher
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank: int, fn: Callable, world_size: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(*args)


def spawn(fn: Callable, world_size: int, *args) -> None:
    """Run ``fn(*args)`` in ``world_size`` new processes on this machine with the environment
    torchrun gives its workers (for tests, benchmarks and notebooks); ``fn`` must be importable
    by name. Raises if any process fails."""
    torch.multiprocessing.spawn(_spawned, args=(fn, world_size, _free_port(), args), nprocs=world_size, join=True)
