"""Installation facts: build_info, and the pure-PyTorch path when _C is
missing or was built against another torch."""
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import metafast

pytestmark = pytest.mark.kernels  # CI runs these beside other torch versions too


def test_build_info_fields():
    info = metafast.build_info()
    for key in ("metafast_version", "torch_version", "extension", "cuda_kernels", "cuda_version", "cuda_archs"):
        assert key in info
    assert info["torch_version"] == torch.__version__
    if info["extension"]:
        assert info["built_torch_version"] and info["torch_target"] == "2.11"
        if info["cuda_kernels"] and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            assert "90" in info["cuda_archs"]  # the documented default includes sm_90


def test_extension_loaded_when_required():
    # CI sets METAFAST_REQUIRE_EXTENSION=1 so that a broken build cannot pass
    # by skipping every kernel test.
    if os.environ.get("METAFAST_REQUIRE_EXTENSION") != "1":
        pytest.skip("METAFAST_REQUIRE_EXTENSION is not set")
    info = metafast.build_info()
    assert info["extension"], info["extension_error"]
    if os.environ.get("METAFAST_WITH_CUDA") == "1":
        assert info["cuda_kernels"]


def _run(prelude: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(prelude) + textwrap.dedent("""
        import warnings, torch
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import metafast
        print("WARN:", [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)])
        print("AVAILABLE:", metafast._extension.available())
        import sys
        print("C_LOADED:", "metafast._C" in sys.modules)
        m = metafast.nn.MLP([1, 8, 1]).double()
        b = metafast.data.Sinusoid().sample(3, 4, 4, dtype=torch.float64)
        meta = metafast.BatchedMAML(m, inner_steps=2, meta_sgd=True)
        import warnings as ww
        ww.simplefilter("ignore")
        out = meta(b.support_x, b.support_y, b.query_x, b.query_y)
        ref = metafast.reference.meta_loss(m, b.support_x, b.support_y, b.query_x, b.query_y, 0.0, 2,
                                           lrs=list(meta.inner_lrs))
        g1 = torch.autograd.grad(out.loss, list(m.parameters()))
        g2 = torch.autograd.grad(ref, list(m.parameters()))
        print("BACKEND:", meta.backend_used)
        print("MAXERR:", max(((a - c).norm() / c.norm()).item() for a, c in zip(g1, g2)))
        new = metafast.ops.sgd_update([torch.ones(2)], [torch.ones(3, 2)], 0.5)
        print("SGD:", new[0].tolist())
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_missing_extension_warns_once_and_falls_back():
    r = _run("""
        import sys
        sys.modules["metafast._build_config"] = None  # as if _C was never built
    """)
    assert r.returncode == 0, r.stderr
    assert "not built" in r.stdout and r.stdout.count("Running on the pure-PyTorch path") == 1
    assert "AVAILABLE: False" in r.stdout and "BACKEND: torch" in r.stdout
    assert float(r.stdout.split("MAXERR:")[1].split()[0]) < 1e-10
    assert "SGD: [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]" in r.stdout


def test_extension_needing_a_newer_torch_is_not_loaded():
    r = _run("""
        import sys, types
        fake = types.ModuleType("metafast._build_config")
        fake.BUILT_WITH_TORCH, fake.TORCH_TARGET = "99.1.0", "99.1"
        fake.WITH_CUDA, fake.CUDA_VERSION, fake.CUDA_ARCHS = False, "", ""
        sys.modules["metafast._build_config"] = fake
    """)
    assert r.returncode == 0, r.stderr
    assert "need torch >= 99.1" in r.stdout
    assert "AVAILABLE: False" in r.stdout and "BACKEND: torch" in r.stdout
    assert "C_LOADED: False" in r.stdout  # the library was never loaded


def test_stable_abi_accepts_any_torch_at_or_above_the_target():
    from metafast import _extension

    if not _extension.available():
        pytest.skip("metafast._C not built")
    target = _extension._major_minor(_extension.CONFIG.TORCH_TARGET)
    assert target <= _extension._major_minor(torch.__version__)
    assert target == (2, 11)  # the documented stable-ABI target


@pytest.mark.parametrize("archs, capability, runs", [
    ("80-real,90", (8, 0), True), ("80-real,90", (8, 6), True), ("80-real,90", (8, 9), True),
    ("80-real,90", (9, 0), True), ("80-real,90", (10, 0), True), ("80-real,90", (12, 0), True),
    ("80-real,90", (7, 5), False), ("80-real,90", (7, 0), False),
    ("80-real,90-real", (10, 0), False), ("86-real", (8, 0), False), ("75", (8, 0), True),
    ("90a-real", (9, 0), True), ("100-real", (10, 0), True), ("100-real", (12, 0), False),
])
def test_cuda_arch_rule(monkeypatch, archs, capability, runs):
    from metafast import _extension

    fake = types.SimpleNamespace(CUDA_ARCHS=archs)
    monkeypatch.setattr(_extension, "CONFIG", fake)
    assert _extension.runs_on_capability(*capability) is runs


def test_old_gpu_falls_back_with_a_reason(monkeypatch):
    """auto must not pick the fused kernel on a GPU its code cannot run on."""
    from metafast import _extension
    from metafast.ops import _dispatch

    monkeypatch.setattr(_extension, "_C", object())
    monkeypatch.setattr(_extension, "CUDA_UNAVAILABLE_REASON", None)
    monkeypatch.setattr(_extension, "CONFIG", types.SimpleNamespace(CUDA_ARCHS="80-real,90"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    reason = _dispatch.kernel_unavailable_reason(torch.device("cuda", 0))
    assert "Tesla T4" in reason and "7.5" in reason
    assert not _dispatch.kernel_available(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert _dispatch.kernel_available(torch.device("cuda", 0))


def test_cli_names_the_missing_extra():
    # The core needs only torch and numpy; the CLI says in one line what to install.
    code = textwrap.dedent("""
        import sys
        for name in ("tqdm", "matplotlib", "PIL"):
            sys.modules[name] = None   # as if the `cli` extra were not installed
        from metafast.__main__ import main
        sys.exit(main(["demo", "--iterations", "1"]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip() and "RuntimeWarning" not in l]
    assert lines[-1] == ("metafast: python -m metafast demo needs tqdm, which is not installed: "
                         "pip install 'metafast[cli]'"), r.stderr


def test_core_imports_without_the_cli_extra():
    code = textwrap.dedent("""
        import sys
        for name in ("matplotlib", "tqdm", "PIL"):
            sys.modules[name] = None
        import torch, metafast
        m = metafast.BatchedMAML(metafast.nn.MLP([1, 4, 1]).double(), inner_steps=1)
        b = metafast.data.Sinusoid().sample(2, 3, 3, dtype=torch.float64)
        print(float(m(b.support_x, b.support_y, b.query_x, b.query_y).loss) >= 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr
