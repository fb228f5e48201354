"""BatchedMAML's backends, one class each behind one interface (base.Backend).

  fused:   the metafast::mlp_adapt kernel (plain MLPs, ANIL's Linear head)
  torch:   torch.func.functional_call vmapped over tasks (any model it can run)
  loop:    the plain per-task loop (any model: running statistics, shared modules)
  compile: torch.compile over the torch.func meta-gradient (see compiled.py)

A new backend is one module here and one entry in BACKENDS; "auto" tries
AUTO_ORDER in turn (see metafast.algorithms.batched.choose_backend).
"""
from metafast.algorithms.backends.base import Backend
from metafast.algorithms.backends.compiled import CompiledBackend
from metafast.algorithms.backends.fused import FusedBackend
from metafast.algorithms.backends.loop import LoopBackend
from metafast.algorithms.backends.vmap import VmapBackend

BACKENDS: dict[str, Backend] = {b.name: b for b in (FusedBackend(), VmapBackend(), LoopBackend(), CompiledBackend())}

__all__ = ["Backend", "BACKENDS", "CompiledBackend", "FusedBackend", "LoopBackend", "VmapBackend"]
