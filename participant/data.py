"""The site's private data, standardised, featurised and split: loaded cheaply.

In deployment every Flower message runs in a fresh ``flwr-clientapp``
process, so this is on the per-round path. Standardisation and features are
cached on disk (``chem`` feature cache, keyed by standardised SMILES and spec
digest), so a round pays for a file read, not for RDKit.

The local split (train / held-out validation) is a scaffold split with the
site's own seed: held-out metrics then measure generalisation to new chemical
series, which is what a member cares about.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chem.featurizers import FeaturizationSpec, featurize
from chem.splits import scaffold_split
from chem.tables import MoleculeTable, TableReport, load_table, report_lines
from participant.config import ParticipantConfig
from protocols.atomic_files import write_json

__all__ = ["SiteData", "load_site_data"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SiteData:
    """Features, labels and masks for the site's train and held-out splits."""

    endpoints: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    mask_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    mask_valid: np.ndarray
    report: TableReport

    @property
    def invalid_rows(self) -> int:
        """Rows and label cells that were rejected (reported by :attr:`report`)."""
        return len(self.report.invalid)

    @property
    def n_train(self) -> int:
        """Number of training molecules."""
        return int(self.x_train.shape[0])

    def label_counts(self, split: str = "train") -> dict[str, int]:
        """Labelled molecules per endpoint: aggregate numbers, safe to share."""
        mask = self.mask_train if split == "train" else self.mask_valid
        return {e: int(mask[:, i].sum()) for i, e in enumerate(self.endpoints)}


def load_site_table(cfg: ParticipantConfig) -> MoleculeTable:
    """The configured files through ``chem.tables``: one row per structure, every row reported."""
    table = load_table(cfg.data.files, smiles_column=cfg.data.smiles_column,
                       endpoints={e.endpoint: e.column for e in cfg.data.endpoints},
                       tasks={e.endpoint: e.task for e in cfg.data.endpoints},
                       encoding=cfg.data.encoding, cache_dir=cfg.state_dir / "feature-cache")
    for line in report_lines(table.report.invalid):
        log.warning("%s", line)
    if table.report.invalid or table.report.duplicates:
        log.warning("site data: %s", table.report.summary())
    return table


def _cached_split(smiles: list[str], frac: float, seed: int, cache: Path
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Scaffold split, cached: it parses every molecule, which a round should not pay for."""
    key = hashlib.sha256(json.dumps([smiles, frac, seed]).encode()).hexdigest()
    path = cache / f"split-{key}.json"
    if path.exists():
        d = json.loads(path.read_text(encoding="utf-8"))
        return np.asarray(d["train"], dtype=np.int64), np.asarray(d["valid"], dtype=np.int64)
    train, valid, _ = scaffold_split(smiles, (1.0 - frac, frac, 0.0), seed=seed)
    write_json(path, {"train": train.tolist(), "valid": valid.tolist()})
    return train, valid


def load_site_data(cfg: ParticipantConfig, spec: FeaturizationSpec) -> SiteData:
    """Load, featurise (through the cache) and split the site's data."""
    table = load_site_table(cfg)
    smiles = list(table.smiles)
    labels = table.labels.astype(np.float32)
    mask = table.mask.astype(np.float32)
    x = featurize(smiles, spec, cache_dir=cfg.state_dir / "feature-cache")
    frac = cfg.data.valid_fraction
    train_idx, valid_idx = _cached_split(smiles, frac, cfg.data.split_seed,
                                         cfg.state_dir / "feature-cache")
    labels = np.nan_to_num(labels, nan=0.0)
    return SiteData(
        endpoints=cfg.data.endpoint_names,
        x_train=x[train_idx], y_train=labels[train_idx], mask_train=mask[train_idx],
        x_valid=x[valid_idx], y_valid=labels[valid_idx], mask_valid=mask[valid_idx],
        report=table.report,
    )
