"""Content-addressed on-disk cache of feature matrices.

The key is SHA-256 over the featurization spec digest and the ordered list of
standardised SMILES, so any change of molecules, order, featurizer, RDKit or
standardiser version is a different entry, never a stale hit. Each entry is
``<key>.npy`` plus ``<key>.sha256`` (the digest of the .npy bytes), both
written atomically; an entry whose bytes do not match is treated as a miss
and recomputed. This makes a participant's per-round start-up a file read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from chem.featurizers import FeaturizationSpec

__all__ = ["FeatureCache"]

log = logging.getLogger(__name__)


class FeatureCache:
    """Feature matrices keyed by (standardised SMILES list, spec digest)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    @staticmethod
    def key(smiles: Sequence[str], spec: FeaturizationSpec) -> str:
        """Content address of a feature matrix."""
        h = hashlib.sha256()
        h.update(spec.digest().encode())
        for s in smiles:
            h.update(b"\n")
            h.update(s.encode())
        return h.hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.npy", self.dir / f"{key}.sha256"

    def get(self, smiles: Sequence[str], spec: FeaturizationSpec) -> np.ndarray | None:
        """The cached matrix, or None on a miss or a corrupted entry."""
        data_path, sum_path = self._paths(self.key(smiles, spec))
        if not data_path.exists() or not sum_path.exists():
            return None
        # One copy from the kernel into a writable buffer; the array is a view on it,
        # so a warm hit costs one read and one hash (no np.load copy).
        with data_path.open("rb") as f:
            raw = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(raw) != len(raw):
                return None
        if hashlib.sha256(raw).hexdigest() != sum_path.read_text().strip():
            log.warning("feature cache entry %s is corrupted; recomputing", data_path.name)
            return None
        try:
            array = _from_npy_bytes(raw)
        except ValueError:
            return None
        if array.ndim != 2 or array.shape[0] != len(smiles):
            return None
        return array

    def put(self, smiles: Sequence[str], spec: FeaturizationSpec, features: np.ndarray) -> None:
        """Store a matrix atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data_path, sum_path = self._paths(self.key(smiles, spec))
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(features, dtype="<f4"), version=(1, 0),
                                 allow_pickle=False)
        raw = buf.getvalue()
        _atomic_write(data_path, raw)
        _atomic_write(sum_path, hashlib.sha256(raw).hexdigest().encode())


def _from_npy_bytes(raw: bytearray) -> np.ndarray:
    """A float32 C-order array viewing the bytes of an .npy file (ValueError if not one)."""
    header = io.BytesIO(bytes(raw[:4096]))
    version = np.lib.format.read_magic(header)
    if version != (1, 0):
        raise ValueError(f"unexpected .npy version {version}")
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
    if fortran or dtype != np.dtype("<f4"):
        raise ValueError("expected a C-order little-endian float32 array")
    count = int(np.prod(shape))
    offset = header.tell()
    if len(raw) - offset != count * 4:
        raise ValueError("truncated .npy data")
    return np.frombuffer(raw, dtype="<f4", count=count, offset=offset).reshape(shape)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
