"""Helpers shared by the benchmark scripts: devices, timing, memory, tables, JSON.

Nothing here depends on metafast except :func:`environment`, which records its
version and build when it imports, and :func:`resolve_device`, which reads
``--device`` as every metafast command does.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")


def import_metafast():
    """Imports metafast; falls back to the repository checkout when it is not installed."""
    try:
        import metafast  # noqa: F401
    except ImportError:
        sys.path.insert(0, REPO)
        import metafast  # noqa: F401
    return sys.modules["metafast"]


# --------------------------------------------------------------------------- devices

def resolve_device(name: str) -> torch.device:
    """metafast's reading of ``--device`` (``auto`` → cuda when available); an unusable device exits with status 2."""
    import_metafast()
    from metafast.devices import resolve_device as resolve

    try:
        return resolve(name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def devices_for(name: str) -> list[torch.device]:
    """The devices a benchmark with rows and a result file per device runs on:
    for ``auto`` the CPU and, when available, CUDA; otherwise the one
    :func:`resolve_device` reads."""
    if name == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [resolve_device(name)]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_slug(device: torch.device) -> str:
    """Short file-name-safe device tag: ``cpu`` or e.g. ``cuda-nvidia-h100-80gb-hbm3``."""
    if device.type != "cuda":
        return device.type
    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cuda-{name}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- environment

def cpu_vector_flags() -> list[str]:
    """The x86 vector extensions the CPU reports (the CPU kernels pick their
    ISA level from these: AVX-512, AVX2+FMA or SSE2)."""
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512vl", "avx512bw")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """Everything a result file needs to be interpreted later."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_vector_flags": cpu_vector_flags(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count}
    try:
        mf = import_metafast()
        info["metafast"] = getattr(mf, "__version__", "unknown")
        try:
            info["metafast_build_info"] = mf.build_info()
        except Exception as exc:  # informational only
            info["metafast_build_info"] = {"error": repr(exc)}
    except Exception as exc:
        info["metafast"] = f"import failed: {exc!r}"
    return info


# --------------------------------------------------------------------------- timing and memory

@dataclass
class Timing:
    median_s: float
    iqr_s: float
    mean_s: float
    runs: int          # timed blocks
    per_run: int       # calls per block
    times_s: list[float] = field(default_factory=list)


def time_fn(fn: Callable[[], Any], *, min_run_time: float, threads: int, label: str = "",
            sub_label: str = "", description: str = "", runs: int | None = None) -> Timing:
    """Times ``fn()`` with ``torch.utils.benchmark.Timer.blocked_autorange``, or
    with ``runs`` separate ``Timer.timeit(1)`` calls (one call each, after the
    Timer's own two warm-up calls) when ``runs`` is given (``min_run_time`` is
    then unused).

    The Timer synchronises CUDA around each block, so GPU work is counted.
    ``threads`` is passed on explicitly (the Timer would otherwise run with 1).
    """
    from torch.utils.benchmark import Measurement, Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=label, sub_label=sub_label,
                  description=description)
    if runs is None:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    else:
        m, = Measurement.merge([timer.timeit(1) for _ in range(runs)])
    return Timing(median_s=m.median, iqr_s=m.iqr, mean_s=m.mean, runs=len(m.times),
                  per_run=m.number_per_run, times_s=list(m.times))


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak device memory of one call of ``fn`` (CUDA), above what was allocated before.

    On the CPU there is no per-call allocator peak: returns ``None`` values and the
    process's lifetime maximum RSS (``ru_maxrss``) for reference.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": (peak - before) / 2**20, "peak_total_mib": peak / 2**20, "kind": "cuda_max_allocated"}
    return {"peak_mib": None, "process_max_rss_mib": max_rss_mib(), "kind": "n/a on cpu"}


def max_rss_mib() -> float:
    """This process's peak resident set size so far (``ru_maxrss``), in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- output

def add_speedups(rows: Sequence[dict[str, Any]], *, name_key: str, time_key: str, group: Sequence[str],
                 baselines: Sequence[str] = ("eager", "vmap")) -> None:
    """Adds ``speedup_vs_<baseline>`` to each row: the time of the row named
    ``baseline`` (under ``name_key``) among the rows that agree on the ``group``
    keys, divided by this row's time (``time_key``); None where there is no such
    row or it has no time."""
    def key(r: dict[str, Any]) -> tuple:
        return tuple(r[k] for k in group)

    times = {(key(r), r[name_key]): r[time_key] for r in rows}
    for r in rows:
        for b in baselines:
            t = times.get((key(r), b))
            r[f"speedup_vs_{b}"] = t / r[time_key] if t else None


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Plain-text table. ``columns``: (key in row, header). Floats are printed by the caller's str()."""
    cells = [[("" if r.get(k) is None else str(r.get(k))) for k, _ in columns] for r in rows]
    headers = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [line(headers), "-" * len(line(headers))]
    prev = None
    for r, c in zip(rows, cells):
        group = r.get("_group")
        if prev is not None and group != prev:
            out.append("")
        prev = group
        out.append(line(c))
    return "\n".join(out)


def fmt_ms(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def fmt_ratio(x: float | None) -> str | None:
    return None if x is None else f"{x:.2f}x"


def default_out_path(name: str, device: torch.device) -> str:
    date = _dt.date.today().isoformat()
    return os.path.join(RESULTS_DIR, f"{name}_{device_slug(device)}_{date}.json")


def out_path(out: str | None, name: str, device: torch.device, several: bool) -> str:
    """Where a device's result file goes: ``--out`` (``x.json`` becomes ``x_<device type>.json``
    when one run writes ``several`` devices' files), else :func:`default_out_path`."""
    if not out:
        return default_out_path(name, device)
    if not several:
        return out
    root, ext = os.path.splitext(out)
    return f"{root}_{device.type}{ext}"


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
