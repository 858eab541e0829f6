"""Per-round checkpoints, written atomically and verified on load.

``<state>/checkpoints/round-NNNNNN/`` holds ``weights.npz`` (global shared
parameters), ``optimizer.npz`` (server-optimizer moments), ``state.json``
(round, optimizer step count, RNG state, latest receipt and its hash, the
config digest, what the coordinator knows of its nodes) and ``manifest.json``
with the SHA-256 of each file. The directory is built under a temporary name
and renamed into place, so a crash leaves either the whole checkpoint or
none; a checkpoint whose manifest does not match its files is skipped with a
warning (and an explicit :func:`load` of it raises).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocols.atomic_files import staged_directory
from protocols.errors import CheckpointError

__all__ = ["Checkpoint", "latest", "load", "save"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Checkpoint:
    """Everything needed to resume after round ``round``."""

    round: int
    weights: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    rng_state: dict[str, Any]
    receipt_hash: str
    receipt_bytes: bytes
    config_digest: str
    extra: dict[str, Any] = field(default_factory=dict)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _load_npz(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def save(state_dir: Path, ckpt: Checkpoint, *, keep: int = 3) -> Path:
    """Write a checkpoint atomically; keep the newest ``keep``."""
    root = Path(state_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    opt_arrays = {f"m.{k}": v for k, v in ckpt.optimizer.get("m", {}).items()}
    opt_arrays.update({f"v.{k}": v for k, v in ckpt.optimizer.get("v", {}).items()})
    files = {
        "weights.npz": _npz(ckpt.weights),
        "optimizer.npz": _npz(opt_arrays),
        "state.json": json.dumps({
            "round": ckpt.round, "optimizer_steps": ckpt.optimizer.get("steps", 0),
            "rng_state": ckpt.rng_state, "receipt_hash": ckpt.receipt_hash,
            "receipt": ckpt.receipt_bytes.decode("utf-8"), "config_digest": ckpt.config_digest,
            "extra": ckpt.extra}, sort_keys=True).encode(),
    }
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    final = root / f"round-{ckpt.round:06d}"
    with staged_directory(final) as stage:
        for name, data in {**files, "manifest.json": json.dumps(manifest).encode()}.items():
            (stage / name).write_bytes(data)
    for old in sorted(root.glob("round-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path) -> Checkpoint:
    """Load and verify one checkpoint directory."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        raw = {name: (path / name).read_bytes() for name in manifest}
    except (OSError, ValueError) as exc:
        raise CheckpointError("checkpoint is incomplete", got=str(path),
                              fix="resume from the previous checkpoint") from exc
    for name, digest in manifest.items():
        if hashlib.sha256(raw[name]).hexdigest() != digest:
            raise CheckpointError(f"checkpoint file {name} does not match its manifest",
                                  got=str(path / name), fix="resume from an earlier checkpoint")
    state = json.loads(raw["state.json"])
    opt = _load_npz(raw["optimizer.npz"])
    return Checkpoint(
        round=int(state["round"]), weights=_load_npz(raw["weights.npz"]),
        optimizer={"steps": state["optimizer_steps"],
                   "m": {k[2:]: v for k, v in opt.items() if k.startswith("m.")},
                   "v": {k[2:]: v for k, v in opt.items() if k.startswith("v.")}},
        rng_state=state["rng_state"], receipt_hash=state["receipt_hash"],
        receipt_bytes=state["receipt"].encode("utf-8"), config_digest=state["config_digest"],
        extra=state["extra"])


def latest(state_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies, or None."""
    root = Path(state_dir) / "checkpoints"
    for path in sorted(root.glob("round-*"), reverse=True):
        try:
            return load(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", path.name, exc.message)
    return None
