"""Content-addressed on-disk cache of feature matrices.

The key is SHA-256 over the featurization spec digest and the ordered list of
standardised SMILES, so any change of molecules, order, featurizer, RDKit or
standardiser version is a different entry, never a stale hit. Each entry is
``<key>.npz`` (dense, or CSR when mostly zeros, as count fingerprints are)
plus ``<key>.sha256`` (the digest of the .npz bytes), both written
atomically; an entry whose bytes do not match is treated as a miss and
recomputed. This makes a participant's per-round start-up a file read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protocols.atomic_files import write_bytes

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
        return self.dir / f"{key}.npz", self.dir / f"{key}.sha256"

    def get(self, smiles: Sequence[str], spec: FeaturizationSpec) -> np.ndarray | None:
        """The cached matrix, or None on a miss or a corrupted entry."""
        data_path, sum_path = self._paths(self.key(smiles, spec))
        if not data_path.exists() or not sum_path.exists():
            return None
        raw = data_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != sum_path.read_text().strip():
            log.warning("feature cache entry %s is corrupted; recomputing", data_path.name)
            return None
        try:
            array = _decode(raw)
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile):
            log.warning("feature cache entry %s is unreadable; recomputing", data_path.name)
            return None
        if array.ndim != 2 or array.shape[0] != len(smiles):
            return None
        return array

    def put(self, smiles: Sequence[str], spec: FeaturizationSpec, features: np.ndarray) -> None:
        """Store a matrix atomically (data first, then its checksum)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data_path, sum_path = self._paths(self.key(smiles, spec))
        raw = _encode(np.asarray(features, dtype=np.float32))
        write_bytes(data_path, raw)
        write_bytes(sum_path, hashlib.sha256(raw).hexdigest().encode())


# Count fingerprints are ~2% non-zero: stored as CSR they are ~20x smaller, so a
# warm hit reads and hashes ~2 MB instead of ~34 MB for 4,200 molecules.
_SPARSE_BELOW = 0.25


def _encode(features: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if features.ndim == 2 and features.size and \
            np.count_nonzero(features) < _SPARSE_BELOW * features.size:
        rows, cols = np.nonzero(features)
        indptr = np.zeros(features.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=features.shape[0]), out=indptr[1:])
        np.savez(buf, shape=np.array(features.shape, dtype=np.int64), indptr=indptr,
                 indices=cols.astype(np.int32), data=features[rows, cols])
    else:
        np.savez(buf, dense=np.ascontiguousarray(features))
    return buf.getvalue()


def _decode(raw: bytes) -> np.ndarray:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        if "dense" in npz.files:
            return np.asarray(npz["dense"], dtype=np.float32)
        n, d = (int(x) for x in npz["shape"])
        indptr, indices, data = npz["indptr"], npz["indices"], npz["data"]
    if indptr.shape != (n + 1,) or indices.shape != data.shape or int(indptr[-1]) != len(data):
        raise ValueError("inconsistent sparse feature entry")
    out = np.zeros((n, d), dtype=np.float32)
    out[np.repeat(np.arange(n), np.diff(indptr)), indices] = data
    return out
