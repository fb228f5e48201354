"""Reading the files of the few-shot data sets: one-line errors and safe pickles.

Nothing here downloads anything: a missing file is a :class:`FileNotFoundError`
whose one-line message names the file, the folder it was looked for in and
where the data set is usually obtained.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["as_bytes", "bad_file", "load_pickle", "missing_file", "require_folder"]


def missing_file(path: Path, dataset: str, needs: str, source: str) -> FileNotFoundError:
    """``FileNotFoundError``: ``path`` is missing; ``needs`` says what the folder must hold."""
    return FileNotFoundError(
        f"{dataset} file {path} is missing: the folder {path.parent} must hold {needs}. {source} "
        f"Nothing is downloaded automatically."
    )


def bad_file(path: Path, dataset: str, why: str, source: str) -> ValueError:
    """``ValueError``: ``path`` exists but cannot be read as ``dataset`` (``why``)."""
    return ValueError(f"{dataset} file {path} is unreadable or not in the expected format ({why}); it may be "
                      f"corrupt or truncated. {source}")


def require_folder(root: Path, dataset: str, needs: str, source: str) -> Path:
    """``root`` expanded, or a one-line error if it is not an existing folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{dataset} folder {root} does not exist; it must hold {needs}. {source} "
                                f"Nothing is downloaded automatically.")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; pass the folder that holds {needs}. {source}")
    return root


# Pickles of the published files hold plain containers and NumPy arrays only;
# anything else (arbitrary callables) is refused rather than executed.
_ALLOWED = {
    ("builtins", n) for n in ("list", "dict", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int",
                              "float", "complex", "bool", "slice")
} | {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
} | {
    (m, n)
    for m in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric", "numpy")
    for n in ("_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype")
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module in ("numpy", "numpy.dtypes") and name.endswith("DType"):  # numpy >= 1.25 dtype classes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only containers and arrays are allowed)")


def load_pickle(f: BinaryIO | Path, dataset: str, source: str, name: str | None = None):
    """Unpickle plain containers and NumPy arrays (Python 2 pickles included).

    Python 2 ``str`` objects come back as latin-1 ``str`` (see :func:`as_bytes`);
    dictionary keys that come back as ``bytes`` are decoded.  Any failure is a
    one-line :func:`bad_file` error naming the file.
    """
    if name is None:
        name = f if isinstance(f, (str, Path)) else getattr(f, "name", "<pickle>")
    path = Path(name)
    try:
        if isinstance(f, (str, Path)):
            with open(f, "rb") as fh:
                obj = _SafeUnpickler(fh, encoding="latin1").load()
        else:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, not a pickle, or a refused class
        raise bad_file(path, dataset, f"{type(e).__name__}: {e}", source) from e
    if isinstance(obj, dict):
        obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    return obj


def as_bytes(x) -> bytes:
    """Encoded image bytes from a pickle: ``bytes``, a uint8 array or a latin-1 ``str`` (Python 2)."""
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("latin1")
    if isinstance(x, np.ndarray):
        return (x if x.dtype == np.uint8 else x.astype(np.uint8)).tobytes()
    return bytes(x)
