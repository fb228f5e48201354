"""Installation facts: build_info, and the pure-PyTorch path when _C is
missing or was built against another torch."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import metafast


def test_build_info_fields():
    info = metafast.build_info()
    for key in ("metafast_version", "torch_version", "extension", "cuda_kernels", "cuda_version", "cuda_archs"):
        assert key in info
    assert info["torch_version"] == torch.__version__
    if info["extension"]:
        assert info["built_torch_version"] == torch.__version__
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


def test_extension_for_another_torch_is_not_loaded():
    r = _run("""
        import sys, types
        fake = types.ModuleType("metafast._build_config")
        fake.TORCH_VERSION, fake.WITH_CUDA, fake.CUDA_VERSION, fake.CUDA_ARCHS = "1.0.0", False, "", ""
        sys.modules["metafast._build_config"] = fake
    """)
    assert r.returncode == 0, r.stderr
    assert "built against torch 1.0.0" in r.stdout
    assert "AVAILABLE: False" in r.stdout and "BACKEND: torch" in r.stdout
    assert "C_LOADED: False" in r.stdout  # the mismatched library was never loaded
