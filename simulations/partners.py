"""Virtual partners: spread each endpoint's molecules across partners, then split.

For each consortium endpoint the molecules (a vendored dataset or a CSV) are
partitioned across partners with the scenario's partitioner; a private
endpoint goes whole to its one partner. Each partner's share of each endpoint
is then split by scaffold into the partner's own training data (what its
daemon sees, written as ``train.csv``) and its own held-out test set
(``test.csv``, used only by the report). Rows stay per endpoint (NaN in other
endpoint columns) rather than merged by molecule, so no partner is given a
label it would not hold.

Every source goes through ``chem.tables.load_table``, the loader a site uses:
rejected rows and label cells, and merged duplicate structures, are in
:func:`source_reports`; each partner's :attr:`PartnerData.intake` is what
its own loader reports for its ``train.csv``. Both go into ``results.json``
and the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from chem.partition import quantity_skew_partition, scaffold_dirichlet_partition
from chem.splits import scaffold_split
from chem.tables import MoleculeTable, load_table, read_frame
from protocols.errors import ConfigError, DataError
from simulations.datasets import load_dataset
from simulations.scenario import EndpointSource, Scenario

if TYPE_CHECKING:
    from protocols.endpoints import Task

log = logging.getLogger(__name__)

__all__ = ["PartnerData", "build_partner_data", "column_partition", "source_reports"]


@dataclass(frozen=True, kw_only=True)
class PartnerData:
    """Files and counts for one virtual partner."""

    index: int
    train_csv: Path
    test_csv: Path
    endpoints: tuple[str, ...]
    counts: dict[str, tuple[int, int]]  # endpoint -> (train, test)
    intake: dict[str, Any] = field(default_factory=dict)  # its loader's TableReport.to_dict()


def _task(e: EndpointSource) -> Task:
    return "classification" if e.task == "classification" else "regression"


def _endpoint_table(e: EndpointSource, cache: Path) -> MoleculeTable:
    if e.dataset is not None:
        return load_dataset(e.dataset, cache_dir=cache)
    assert e.csv is not None
    return load_table(e.csv, smiles_column=e.smiles_column, endpoints={e.name: e.value_column},
                      tasks={e.name: _task(e)}, encoding=e.encoding, cache_dir=cache)


def _labelled(e: EndpointSource, cache: Path, scenario: Scenario
              ) -> tuple[list[str], np.ndarray, list[str]]:
    """Labelled structures, their labels and (column partition) their sources."""
    table = _endpoint_table(e, cache)
    keep = table.mask[:, 0] > 0
    smiles = [s for s, k in zip(table.smiles, keep, strict=True) if k]
    sources = (_sources(e, table, keep, scenario.partner_column)
               if scenario.partner_column and e.private_to is None else [""] * len(smiles))
    need = scenario.partners * scenario.min_partner_size
    if e.private_to is None and len(smiles) < need:
        merged = table.report.merged.get(e.name, 0)
        raise DataError(
            f"endpoint {e.name} has {len(smiles)} distinct labelled structures"
            + (f" ({merged} duplicate rows were merged into them)" if merged else "")
            + f": too few for {scenario.partners} partners of at least "
              f"{scenario.min_partner_size}", got=table.report.summary(),
            expected=f">= {need} distinct labelled structures",
            fix="add distinct molecules, or lower `partners` or `min-partner-size`")
    return smiles, table.labels[keep, 0], sources


def _sources(e: EndpointSource, table: MoleculeTable, keep: np.ndarray, column: str
             ) -> list[str]:
    """Each kept structure's source (the partner column of its first row in the CSV)."""
    assert e.csv is not None
    frame = read_frame(e.csv, encoding=e.encoding)
    if column not in frame.columns:
        raise ConfigError("partner-column", f"column {column!r} is not in {e.csv.name} "
                          f"(endpoint {e.name})", got=[str(c) for c in frame.columns],
                          expected=f"a column named {column!r}",
                          fix="name the CSV column that says which partner holds each row")
    values = frame[column].astype("string").str.strip()
    return [str(values.iloc[r - 1]) if pd.notna(values.iloc[r - 1]) else ""
            for r, k in zip(table.rows, keep, strict=True) if k]


def column_partition(sources: list[str], *, n_partners: int, endpoint: str
                     ) -> dict[int, np.ndarray]:
    """Partner k holds the rows of the k-th source name in sorted order.

    Every endpoint of a scenario sorts the same names the same way, so a source is
    one partner across endpoints; a row without a source is left out (and counted).
    """
    names = sorted({s for s in sources if s})
    if len(names) != n_partners:
        raise ConfigError("partner-column", f"endpoint {endpoint} has {len(names)} distinct "
                          f"sources, the scenario {n_partners} partners", got=names[:20],
                          expected=f"{n_partners} distinct values",
                          fix="set `partners` to the number of sources")
    if "" in sources:
        log.warning("endpoint %s: %d row(s) name no source in the partner column and are "
                    "left out", endpoint, sources.count(""))
    index = {name: k for k, name in enumerate(names)}
    owner = np.array([index.get(s, -1) for s in sources])
    return {k: np.flatnonzero(owner == k) for k in range(n_partners)}


def source_reports(scenario: Scenario, cache: Path) -> dict[str, dict[str, Any]]:
    """Per endpoint: its source, who holds it, and its loader report (rows read ... merged)."""
    out = {}
    for e in scenario.endpoints:
        table = _endpoint_table(e, cache)
        out[e.name] = {"source": e.dataset or str(e.csv),
                       "held_by": ("all partners" if e.private_to is None
                                   else f"partner-{e.private_to}"),
                       **table.report.to_dict()}
    return out


def build_partner_data(scenario: Scenario, out_dir: Path, *, seed: int,
                       cache: Path) -> list[PartnerData]:
    """Write each partner's train/test CSVs under ``out_dir/partner-K``."""
    rows: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(scenario.partners)]
    tests: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(scenario.partners)]
    rng = np.random.default_rng(seed)
    for e in scenario.endpoints:
        smiles, y, sources = _labelled(e, cache, scenario)
        if e.max_molecules and len(smiles) > e.max_molecules:
            pick = np.sort(rng.choice(len(smiles), e.max_molecules, replace=False))
            smiles, y = [smiles[i] for i in pick], y[pick]
            sources = [sources[i] for i in pick]
        if e.private_to is not None:
            parts = {e.private_to: np.arange(len(smiles))}
        elif scenario.partition == "column":
            parts = column_partition(sources, n_partners=scenario.partners, endpoint=e.name)
        elif scenario.partition == "quantity-skew":
            got = quantity_skew_partition(len(smiles), n_partners=scenario.partners,
                                          alpha=scenario.alpha, seed=seed,
                                          min_size=scenario.min_partner_size)
            parts = dict(enumerate(got))
        elif scenario.partition == "quantity+scaffold":
            got = quantity_skew_partition(len(smiles), n_partners=scenario.partners,
                                          alpha=scenario.alpha, seed=seed,
                                          min_size=scenario.min_partner_size, smiles=smiles)
            parts = dict(enumerate(got))
        else:
            got = scaffold_dirichlet_partition(smiles, n_partners=scenario.partners,
                                               alpha=scenario.alpha, seed=seed,
                                               min_size=scenario.min_partner_size)
            parts = dict(enumerate(got))
        for k, idx in parts.items():
            local = [smiles[i] for i in idx]
            train, valid, test = scaffold_split(
                local, (1 - scenario.test_fraction, 0.0, scenario.test_fraction), seed=seed)
            train = np.concatenate([train, valid])
            rows[k][e.name] = [(local[i], float(y[idx[i]])) for i in train]
            tests[k][e.name] = [(local[i], float(y[idx[i]])) for i in test]
    names = [e.name for e in scenario.endpoints]
    partners = []
    for k in range(scenario.partners):
        pdir = out_dir / f"partner-{k}"
        pdir.mkdir(parents=True, exist_ok=True)
        for kind, store in (("train", rows[k]), ("test", tests[k])):
            records = [{"smiles": s, **{n: (v if n == name else np.nan) for n in names}}
                       for name, pairs in store.items() for s, v in pairs]
            pd.DataFrame.from_records(records, columns=["smiles", *names]).to_csv(
                pdir / f"{kind}.csv", index=False)
        held = tuple(n for n in names if n in rows[k])
        tasks = {e.name: _task(e) for e in scenario.endpoints if e.name in held}
        # what this partner's own loader (participant.data) will report for its file
        intake = load_table(pdir / "train.csv", endpoints={n: n for n in held},
                            tasks=tasks).report.to_dict() if held else {}
        partners.append(PartnerData(
            index=k, train_csv=pdir / "train.csv", test_csv=pdir / "test.csv", endpoints=held,
            counts={n: (len(rows[k].get(n, [])), len(tests[k].get(n, []))) for n in held},
            intake=intake))
    return partners
