"""The one place that writes state files: every write lands whole or not at all.

A write goes to a unique temporary file in the target's own directory
(:func:`tempfile.mkstemp`, so two writers never share a name and the rename
never crosses a file system), is flushed and ``fsync``-ed, then renamed over
the target with :func:`os.replace` (``rename(2)`` is atomic on POSIX), and the
directory is ``fsync``-ed so the new entry survives a power cut. On any failure
the temporary file is removed. A reader therefore sees the old complete file or
the new complete file, never a partial one.

:func:`create_new` links instead of renaming (``link(2)`` fails with
``EEXIST``), for append-only records that must never be replaced.
:func:`staged_directory` does the same for a directory of files.

Permissions are set on the temporary file before any byte is written, so a
private key is never readable by others, even for an instant. The default is
``0o600``: state describes a site's private data; pass ``mode=0o644`` for what
is meant to be read by others (certificates, public keys, reports).

This is the only module of ``protocols`` that writes to disk, and the only
module in the tree that renames or links files into place
(``tests/test_import_rule.py`` holds both).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "PRIVATE",
    "PUBLIC",
    "atomic_open",
    "create_new",
    "fsync_directory",
    "replace_file",
    "staged_directory",
    "write_bytes",
    "write_json",
    "write_npz",
    "write_text",
]

PRIVATE = 0o600
PUBLIC = 0o644

def fsync_directory(directory: Path) -> None:
    """Make a new or renamed directory entry durable (POSIX: fsync the directory itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _temp_beside(path: Path, *, mode: int) -> Iterator[tuple[IO[bytes], Path]]:
    """A fsynced temporary file next to ``path``; removed unless the caller moved it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        with suppress(FileNotFoundError):  # gone once renamed into place
            tmp.unlink()


def _commit(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


@contextmanager
def atomic_open(path: Path, *, mode: int = PRIVATE) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` atomically when the block ends without error.

    For writers that stream (``DataFrame.to_parquet``, ``np.savez``); the target is
    untouched if the block raises.
    """
    path = Path(path)
    with _temp_beside(path, mode=mode) as (f, tmp):
        yield f
        _commit(f)
        os.replace(tmp, path)
    fsync_directory(path.parent)


def write_bytes(path: Path, data: bytes, *, mode: int = PRIVATE) -> Path:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_open(path, mode=mode) as f:
        f.write(data)
    return Path(path)


def write_text(path: Path, text: str, *, mode: int = PRIVATE) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    return write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: Path, obj: Any, *, indent: int | None = None, sort_keys: bool = False,
               mode: int = PRIVATE) -> Path:
    """Replace ``path`` with ``json.dumps(obj, indent=..., sort_keys=...)`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys), mode=mode)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray], *, mode: int = PRIVATE) -> Path:
    """Replace ``path`` with an uncompressed ``.npz`` of ``arrays`` atomically.

    Object arrays are refused, so the file always loads with ``allow_pickle=False``.
    """
    plain = {k: np.asarray(v) for k, v in arrays.items()}
    if any(a.dtype.hasobject for a in plain.values()):
        raise TypeError("object arrays need pickle to load; store numbers or fixed-width str")
    buf = io.BytesIO()
    np.savez(buf, **plain)  # type: ignore[arg-type]  # numpy's stub wants positional arrays
    return write_bytes(path, buf.getvalue(), mode=mode)


def create_new(path: Path, data: bytes, *, mode: int = PRIVATE) -> Path:
    """Create ``path`` holding ``data``; :class:`FileExistsError` if it already exists.

    The complete, fsynced temporary file is hard-linked to the name, so a concurrent
    writer that lost the race fails instead of replacing the winner's file.
    """
    path = Path(path)
    with _temp_beside(path, mode=mode) as (f, tmp):
        f.write(data)
        _commit(f)
        f.close()
        os.link(tmp, path)
    fsync_directory(path.parent)
    return path


def replace_file(source: Path, target: Path) -> None:
    """Rename an already complete, fsynced file over ``target`` durably (same directory)."""
    os.replace(source, target)
    fsync_directory(Path(target).parent)


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """An empty directory that becomes ``final`` when the block ends without error.

    Write the files into the yielded directory with plain ``open``; on success each
    is fsynced, an existing ``final`` is removed and the stage renamed into place
    (then the parent is fsynced). A crash leaves the old ``final`` or the new one,
    plus at worst a ``.tmp-*`` stage that readers of ``final``'s siblings must skip.
    On error the stage is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        yield stage
        for item in sorted(stage.rglob("*")):
            if item.is_file():
                fd = os.open(item, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_directory(stage)
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    fsync_directory(final.parent)
