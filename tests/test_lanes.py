"""The GPU's parallel decomposition, tested on the CPU (tests/cpp/lanes_test.cpp).

The per-task algorithms of csrc/kernels/mlp/task.h run on the CPU with one
lane and on the GPU with a thread block's 256 lanes. lanes_test runs them with
N CPU threads as lanes (sync() a barrier) and compares every output and
gradient with the one-lane run in float64; built once more with
-fsanitize=thread, where a data race between lanes is a race between the
threads of a GPU block. A deliberately broken kernel (one sync() dropped)
shows that both checks can fail.

tests/cpp/mlp_capi.cpp exposes the same float64 algorithms through ctypes, so
that their NaN semantics are compared with PyTorch's eager autograd here
without building the extension.

Needs only g++ (the extension need not be built).
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "tests" / "cpp"
CXX = shutil.which("g++")
requires_gxx = pytest.mark.skipif(CXX is None, reason="g++ not found")

COMMON = ["-std=c++17", "-pthread", "-fopenmp-simd", "-I", str(ROOT / "csrc")]
TSAN_FAILED_TO_START = ("unexpected memory mapping", "FATAL: ThreadSanitizer", "failed to allocate")


def compile_cxx(source: Path, out: Path, flags: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([CXX, *flags, *COMMON, str(source), "-o", str(out)], capture_output=True, text=True,
                          timeout=600)


def run(cmd: list[str], env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lanes")


@pytest.fixture(scope="module")
def lanes_test(build_dir):
    if CXX is None:
        pytest.skip("g++ not found")
    exe = build_dir / "lanes_test"
    r = compile_cxx(CPP / "lanes_test.cpp", exe, ["-O1", "-Wall"])
    assert r.returncode == 0, f"lanes_test does not compile:\n{r.stderr}"
    return exe


def tsan_env() -> dict:
    env = dict(os.environ)
    # exitcode 66 (the default, made explicit): any report fails the run.
    env["TSAN_OPTIONS"] = " ".join(filter(None, [env.get("TSAN_OPTIONS", ""), "exitcode=66 second_deadlock_stack=1"]))
    return env


@pytest.fixture(scope="module")
def tsan_runner(build_dir):
    """(exe, prefix): the ThreadSanitizer build and the command prefix that lets
    it start here. gcc's TSan runtime aborts at start-up on kernels with more
    mmap randomisation bits than it supports ("unexpected memory mapping");
    running without address-space randomisation (setarch -R) avoids that."""
    if CXX is None:
        pytest.skip("g++ not found")
    exe = build_dir / "lanes_test_tsan"
    r = compile_cxx(CPP / "lanes_test.cpp", exe, ["-O1", "-g", "-fsanitize=thread"])
    if r.returncode != 0:
        if "tsan" in r.stderr.lower():  # e.g. libtsan is not installed
            pytest.skip(f"g++ cannot build with -fsanitize=thread here:\n{r.stderr[-2000:]}")
        pytest.fail(f"lanes_test does not compile with -fsanitize=thread:\n{r.stderr}")
    prefixes = [[]]
    setarch = shutil.which("setarch")
    if setarch:
        prefixes.append([setarch, platform.machine(), "-R"])
    failures = []
    for prefix in prefixes:
        # A start-up probe: a broken kernel run is short and must start.
        probe = run([*prefix, str(exe), "--drop-sync", "1", "--lanes", "2"], env=tsan_env())
        if not any(s in probe.stderr for s in TSAN_FAILED_TO_START) and "dropped sync" in probe.stdout:
            return exe, prefix
        failures.append(f"{' '.join(prefix) or '(plain)'}: rc {probe.returncode}\n{probe.stderr[-1500:]}")
    pytest.skip("ThreadSanitizer cannot run on this machine:\n" + "\n".join(failures))


@requires_gxx
def test_lanes_match_serial(lanes_test):
    """N ∈ {1, 3, 32, 256} threads per task agree with the one-lane run to 1e-12
    (NaN in the same places), NaN propagates, bad labels give NaN."""
    r = run([str(lanes_test)])
    assert r.returncode == 0, f"{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    m = re.search(r"(\d+) passed, (\d+) failed", r.stdout)
    assert m and int(m.group(1)) > 1000 and m.group(2) == "0", r.stdout[-3000:]


@requires_gxx
def test_lanes_thread_sanitizer(tsan_runner):
    """No data race between lanes (= between the threads of a GPU block)."""
    exe, prefix = tsan_runner
    r = run([*prefix, str(exe), "--quick"], env=tsan_env(), timeout=600)
    assert "ThreadSanitizer" not in r.stderr, r.stderr[-8000:]
    assert r.returncode == 0, f"{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    m = re.search(r"(\d+) passed, (\d+) failed", r.stdout)
    assert m and int(m.group(1)) > 300 and m.group(2) == "0", r.stdout[-3000:]


@requires_gxx
def test_lanes_address_sanitizer(build_dir):
    """No out-of-bounds access (bad class labels included: they must never be
    used as an index) and no undefined behaviour (e.g. int overflow)."""
    exe = build_dir / "lanes_test_asan"
    r = compile_cxx(CPP / "lanes_test.cpp", exe,
                    ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"])
    if r.returncode != 0 and "san" in r.stderr.lower():
        pytest.skip(f"g++ cannot build with -fsanitize=address,undefined here:\n{r.stderr[-2000:]}")
    assert r.returncode == 0, r.stderr
    r = run([str(exe), "--quick"])
    assert r.returncode == 0 and "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, \
        f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert re.search(r"\d+ passed, 0 failed", r.stdout), r.stdout[-3000:]


@requires_gxx
@pytest.mark.parametrize("dropped", [1, 5, 11, 24])
def test_a_missing_sync_is_caught(lanes_test, tsan_runner, dropped):
    """The checks can fail: with one lanes.sync() of the real kernel skipped by
    every lane (sync 1: after θ ← init; 5: after the loss, before the
    backward; 11: inside the second step's forward, between two hidden
    layers; 24: in the backward's query forward) ThreadSanitizer reports a data race, and the plain build's
    results differ from the serial run's."""
    plain = run([str(lanes_test), "--drop-sync", str(dropped), "--lanes", "3"])
    assert plain.returncode == 0 and "results differ" in plain.stdout, plain.stdout + plain.stderr
    exe, prefix = tsan_runner
    r = run([*prefix, str(exe), "--drop-sync", str(dropped), "--lanes", "2"], env=tsan_env())
    assert "WARNING: ThreadSanitizer: data race" in r.stderr, r.stdout + r.stderr[-4000:]
    assert r.returncode == 66


@requires_gxx
def test_thread_sanitizer_catches_a_plain_race(build_dir, tsan_runner):
    """A minimal racy lanes loop (a reduction read before the barrier)."""
    _, prefix = tsan_runner
    src = build_dir / "racy.cpp"
    src.write_text(
        "#include <thread>\n#include <vector>\n#include <cstdio>\n"
        "int main() {\n"
        "  std::vector<double> partial(2, 0.0); double total = 0;\n"
        "  auto lane = [&](int i) { partial[i] = i + 1.0; if (i == 0) total = partial[0] + partial[1]; };\n"
        "  std::thread a(lane, 0), b(lane, 1); a.join(); b.join();\n"
        "  std::printf(\"%g\\n\", total);\n}\n")
    exe = build_dir / "racy"
    r = compile_cxx(src, exe, ["-O1", "-g", "-fsanitize=thread"])
    assert r.returncode == 0, r.stderr
    r = run([*prefix, str(exe)], env=tsan_env())
    assert "WARNING: ThreadSanitizer: data race" in r.stderr and r.returncode == 66, r.stderr


# ---------------------------------------------------------------------------
# NaN semantics of the kernels against PyTorch's eager autograd (float64).
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capi(build_dir):
    if CXX is None:
        pytest.skip("g++ not found")
    lib = build_dir / "libmf_capi.so"
    r = compile_cxx(CPP / "mlp_capi.cpp", lib, ["-O1", "-fPIC", "-shared"])
    assert r.returncode == 0, r.stderr
    return lib


@pytest.fixture(scope="module")
def torch_comparison(capi):
    """Runs this file's CHECKS on the library in one child process (a kernel
    that faults must fail these tests, not kill pytest): {check: problems}."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, __file__, str(capi)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": path})
    assert r.returncode == 0, (f"the kernel comparison exited with {r.returncode} (negative: a signal):\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def kernel_run(lib, c):
    """Forward + backward of csrc/kernels/mlp/task.h (SerialLanes) on case c."""
    x, qx = c["x"], c["qx"]
    T, K, _ = x.shape
    Q = qx.shape[1] if qx is not None else 0
    P, S, dL, mse = c["init"].numel(), c["steps"], c["sizes"][-1], c["loss"] == "mse"
    sizes = torch.tensor(c["sizes"], dtype=torch.int64)
    problem = [_ptr(sizes), len(c["sizes"]), 0 if c["activation"] == "relu" else 1, 0 if mse else 1, T, K, Q, S,
               ctypes.c_double(c["lr"]), _ptr(c["lrs"]), _ptr(c.get("weights"))]
    data = [_ptr(x), _ptr(c["y"] if mse else None), _ptr(None if mse else c["y"]), _ptr(qx),
            _ptr(c["qy"] if Q and mse else None), _ptr(c["qy"] if Q and not mse else None)]
    nan = lambda *shape: torch.full(shape, float("nan"), dtype=torch.float64)  # unwritten shows as NaN
    out = dict(adapted=nan(T, P), losses=nan(T, S), query_output=nan(T, Q, dL) if Q else None,
               query_losses=nan(T) if Q else None)
    trajectory = nan(T, S, P)
    lib.mf_test_mlp_adapt(*problem, _ptr(c["init"]), *data, _ptr(out["adapted"]), _ptr(out["losses"]),
                          _ptr(out["query_output"]), _ptr(out["query_losses"]), _ptr(trajectory))
    out.update(grad_init=nan(T, P), grad_lrs=nan(T, P) if c["want_lrs"] else None,
               grad_x=nan(*x.shape) if c["want_x"] else None, grad_qx=nan(*qx.shape) if c["want_qx"] else None)
    g = c["grads"]
    lib.mf_test_mlp_adapt_backward(*problem, *data, int(c["second_order"]), _ptr(g[0]), _ptr(g[1]), _ptr(g[2]),
                                   _ptr(g[3]), _ptr(out["adapted"]), _ptr(trajectory), _ptr(out["grad_init"]),
                                   _ptr(out["grad_lrs"]), _ptr(out["grad_x"]), _ptr(out["grad_qx"]))
    return out


def torch_run(c):
    """The same through mlp_adapt_torch and autograd; an absent upstream
    gradient (None) is an output the objective does not use."""
    from metafast.ops.mlp_adapt import mlp_adapt_torch

    T = c["x"].shape[0]
    params = c["init"].expand(T, -1).clone().requires_grad_()  # per-task gradients, as the kernel's
    lrs = c["lrs"].expand(T, -1).clone().requires_grad_(c["want_lrs"]) if c["lrs"] is not None else None
    x = c["x"].clone().requires_grad_(c["want_x"])
    qx = c["qx"].clone().requires_grad_(c["want_qx"]) if c["qx"] is not None else None
    outs = mlp_adapt_torch(params, lrs, c["lr"], x, c["y"], c["sizes"], c["steps"], c["activation"], c["loss"],
                           not c["second_order"], qx, c["qy"], c.get("weights"))
    wrt = [params] + [t for t, want in ((lrs, c["want_lrs"]), (x, c["want_x"]), (qx, c["want_qx"])) if want]
    pairs = [(o, g) for o, g in zip(outs, c["grads"]) if g is not None]
    grads = list(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True,
                                     materialize_grads=True))
    out = dict(adapted=outs[0].detach(), losses=outs[1].detach(),
               query_output=outs[2].detach() if qx is not None else None,
               query_losses=outs[3].detach() if qx is not None else None, grad_init=grads.pop(0))
    for name in ("lrs", "x", "qx"):
        out["grad_" + name] = grads.pop(0) if c["want_" + name] else None
    return out


def random_nan_case(seed):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    normal = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=g)
    L = rng.randint(1, 3)
    loss = rng.choice(["mse", "cross_entropy"])
    sizes = [rng.randint(1, 6) for _ in range(L + 1)]
    if loss == "cross_entropy":
        sizes[-1] = max(2, sizes[-1])
    T, K, S = rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 3)
    Q = rng.choice([0, rng.randint(1, 4)])
    P = sum(sizes[i] * sizes[i - 1] + sizes[i] for i in range(1, L + 1))
    c = dict(sizes=sizes, loss=loss, activation=rng.choice(["relu", "tanh"]), steps=S, lr=0.1,
             second_order=rng.random() < 0.6, init=normal(P) * 0.7,
             lrs=normal(P).abs() * 0.1 if rng.random() < 0.5 else None, x=normal(T, K, sizes[0]),
             qx=normal(T, Q, sizes[0]) if Q else None)
    if loss == "mse":
        c["y"], c["qy"] = normal(T, K, sizes[-1]), normal(T, Q, sizes[-1]) if Q else None
    else:
        c["y"] = torch.randint(0, sizes[-1], (T, K), generator=g)
        c["qy"] = torch.randint(0, sizes[-1], (T, Q), generator=g) if Q else None
    c["weights"] = torch.rand(T, K, dtype=torch.float64, generator=g) * 3 - 1 if rng.random() < 0.4 else None
    c["want_lrs"] = c["lrs"] is not None and rng.random() < 0.7
    c["want_x"] = rng.random() < 0.5
    c["want_qx"] = bool(Q) and rng.random() < 0.5
    # Upstream gradients; None = that output is unused (the kernel gets nullptr).
    c["grads"] = [normal(T, P), normal(T, S) if rng.random() < 0.7 else None,
                  normal(T, Q, sizes[-1]) if Q and rng.random() < 0.5 else None,
                  normal(T) if Q and rng.random() < 0.7 else None]
    places = [c["init"], c["x"], c["grads"][0]]
    places += [c["y"]] if loss == "mse" else []
    places += [c["qx"]] + ([c["qy"]] if loss == "mse" else []) if Q else []
    places += [c["lrs"]] if c["lrs"] is not None else []
    places += [c["weights"]] if c["weights"] is not None else []
    target = rng.choice(places)
    for _ in range(rng.choice([1, 1, 2])):
        target.view(-1)[rng.randrange(target.numel())] = float("nan")
    return c


def nan_matches_torch(lib) -> list[str]:
    mismatches = []
    for seed in range(120):
        c = random_nan_case(seed)
        width = (0, 2, 8)[seed % 3]  # the per-task path, and task packs of 2 and 8
        assert lib.mf_test_set_pack_width(width) == 0
        got, want = kernel_run(lib, c), torch_run(c)
        lib.mf_test_set_pack_width(0)
        for name, w in want.items():
            if w is None:
                continue
            k = got[name]
            if not torch.equal(k.isnan(), w.isnan()):
                mismatches.append(f"seed {seed} (pack width {width}) {name}: kernel NaN at {(k.isnan() & ~w.isnan()).sum().item()} "
                                  f"places torch is not, finite at {(w.isnan() & ~k.isnan()).sum().item()} where "
                                  f"torch is NaN ({c['sizes']} {c['activation']} {c['loss']})")
                continue
            finite = ~w.isnan()
            if finite.any():
                err = (k[finite] - w[finite]).norm() / max(w[finite].norm().item(), 1e-300)
                if err > 1e-10:
                    mismatches.append(f"seed {seed} (pack width {width}) {name}: relative error {err:.2e}")
    return mismatches


def relu_nan_weight(lib) -> list[str]:
    problems = []
    for width in (0, 2, 8):
        assert lib.mf_test_set_pack_width(width) == 0
        problems += [f"pack width {width}: {p}" for p in _relu_nan_weight(lib)]
    lib.mf_test_set_pack_width(0)
    return problems


def _relu_nan_weight(lib) -> list[str]:
    c = random_nan_case(1)
    g = torch.Generator().manual_seed(3)
    normal = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=g)
    c.update(sizes=[1, 8, 8, 1], loss="mse", activation="relu", steps=1, lrs=None, weights=None, want_lrs=False,
             want_x=True, qx=None, qy=None, want_qx=False, init=normal(97), x=normal(2, 5, 1), y=normal(2, 5, 1))
    c["grads"] = [normal(2, 97), None, None, None]
    c["init"][0] = float("nan")  # W1[0, 0]
    got, want = kernel_run(lib, c), torch_run(c)
    problems = [] if got["losses"].isnan().all() else [f"finite support losses over a NaN weight: {got['losses']}"]
    for name in ("adapted", "grad_init", "grad_x"):
        if not torch.equal(got[name].isnan(), want[name].isnan()):
            problems.append(f"{name}: NaN pattern differs from torch's")
    return problems


CHECKS = {"nan_matches_torch": nan_matches_torch, "relu_nan_weight": relu_nan_weight}


@requires_gxx
def test_kernel_nan_matches_torch(torch_comparison):
    """One or two NaN in a parameter, input, target, rate or upstream gradient
    (120 cases, a third each through the per-task path and task packs of 2 and
    8): every output and gradient of the kernels is NaN exactly where PyTorch's
    eager float64 autograd (mlp_adapt_torch) gives NaN, and equal to 1e-10
    elsewhere; an absent upstream gradient (nullptr) adds nothing, as an
    unused output does in autograd. (Failed before: a NaN first-layer weight
    or input gave finite losses through ReLU.)"""
    problems = torch_comparison["nan_matches_torch"]
    assert not problems, "\n".join(problems[:20])


@requires_gxx
def test_kernel_relu_nan_weight(torch_comparison):
    """One NaN first-layer weight of a ReLU MLP([1, 8, 8, 1]), per task and in
    task packs: every support loss is NaN (it was finite: relu(NaN) gave 0)."""
    problems = torch_comparison["relu_nan_weight"]
    assert not problems, "\n".join(problems)


if __name__ == "__main__":  # the child of torch_comparison: python test_lanes.py LIB
    lib = ctypes.CDLL(sys.argv[1])
    print(json.dumps({name: check(lib) for name, check in CHECKS.items()}))
