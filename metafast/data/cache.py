"""Caches of decoded images, validated against the files they were decoded from.

A cache is one ``.npz`` file holding the arrays and a JSON ``meta`` record:
the cache format and its version, a signature of the source files (sizes,
modification times and/or a content digest, chosen by the loader), the full
class list and the array shapes.  :func:`load_cache` returns the arrays only
if all of that matches what the loader expects now and the loader's own
content check passes; otherwise it warns once (naming the file and the
reason) and returns ``None`` so that the loader decodes again and overwrites
the cache with :func:`save_cache`.  A cache is never trusted blindly.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

__all__ = [
    "CacheWarning",
    "default_cache_dir",
    "dir_writable",
    "file_signature",
    "load_cache",
    "save_cache",
    "save_npz_atomic",
]


class CacheWarning(UserWarning):
    """A cache file was found but is stale or invalid; the data are decoded again."""


def default_cache_dir() -> Path:
    """``$METAFAST_CACHE``, else ``$XDG_CACHE_HOME/metafast``, else ``~/.cache/metafast``."""
    env = os.environ.get("METAFAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "metafast"


def dir_writable(path: Path) -> bool:
    """Whether we may write in ``path``.

    Respects the folder's permission bits even for root (who bypasses them), so a
    shared folder marked read-only is left alone.
    """
    try:
        st = path.stat()
    except OSError:
        return False
    any_write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    return path.is_dir() and bool(st.st_mode & any_write) and os.access(path, os.W_OK | os.X_OK)


def file_signature(path: Path, digest_bytes: int | None = 1 << 20) -> dict:
    """Size, modification time and a digest of ``path``.

    The digest covers the whole file when it is at most ``2 * digest_bytes``
    long (or ``digest_bytes`` is None), else its first and last ``digest_bytes``
    (cheap on multi-gigabyte pickles, and any truncation or rewrite changes
    size, time or the ends).
    """
    st = path.stat()
    h = hashlib.sha1()
    with open(path, "rb") as f:
        if digest_bytes is None or st.st_size <= 2 * digest_bytes:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:
            h.update(f.read(digest_bytes))
            f.seek(st.st_size - digest_bytes)
            h.update(f.read(digest_bytes))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha1": h.hexdigest()}


def save_npz_atomic(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_cache(candidates: list[Path], meta: dict, **arrays) -> Path:
    """Write the cache to the first candidate whose folder is writable (or the last one).

    ``candidates`` are full file paths, best first (beside the data, then the
    cache folder).  ``meta`` is stored as JSON; returns the path written.
    """
    blob = np.array(json.dumps(meta, sort_keys=True))
    writable = [c for c in candidates[:-1] if dir_writable(c.parent)]
    for target in writable + [candidates[-1]]:
        try:
            save_npz_atomic(target, meta=blob, **arrays)
            return target
        except OSError:
            if target == candidates[-1]:
                raise
    raise AssertionError("unreachable")


def _read(path: Path, keys: Iterable[str]) -> tuple[dict, dict]:
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # (np.load leaks a bad zip's file)
        if "meta" not in z.files:
            raise ValueError("it has no meta record (written by an older metafast, or not by metafast)")
        meta = json.loads(str(z["meta"][()]))
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise ValueError(f"it lacks the arrays {missing}")
        return meta, {k: z[k] for k in keys}


def load_cache(
    candidates: list[Path],
    expected: dict,
    keys: Iterable[str],
    check: Callable[[dict, dict], str | None] | None = None,
    what: str = "cache",
) -> tuple[dict, Path] | None:
    """The arrays ``keys`` of the first valid cache among ``candidates``, or None.

    A cache is valid when it loads, every item of ``expected`` equals its meta
    record's item (format, version, source signature, class list, ...) and
    ``check(meta, arrays)`` returns None (else a reason).  When a cache exists
    but none is valid, one :class:`CacheWarning` names the file and the reason.
    """
    keys = list(keys)
    expected = json.loads(json.dumps(expected))  # compare JSON to JSON (tuples -> lists)
    problem = None
    for path in candidates:
        if not path.is_file():
            continue
        try:
            meta, arrays = _read(path, keys)
            why = next((f"its {k} differs" for k, v in expected.items() if meta.get(k) != v), None)
            if why is None and check is not None:
                why = check(meta, arrays)
        except Exception as e:  # unreadable, truncated or not a metafast cache
            why = f"it cannot be read ({type(e).__name__}: {e})"
        if why is None:
            return arrays, path
        problem = problem or (path, why)
    if problem is not None:
        path, why = problem
        warnings.warn(f"{what} {path} is stale or invalid: {why}; decoding the data again", CacheWarning,
                      stacklevel=3)
    return None


def blank_images(images: np.ndarray, per_image_axes: int) -> int:
    """How many images of ``images`` are constant (e.g. all zero).

    ``per_image_axes``: the trailing axes that make up one image.
    """
    flat = images.reshape(-1, int(np.prod(images.shape[images.ndim - per_image_axes:])))
    if flat.shape[0] == 0 or flat.shape[1] == 0:
        return 0
    return int((flat.max(axis=1) == flat.min(axis=1)).sum())
