"""Spreading one dataset across N virtual partners, with realistic skew.

Real consortia are not IID: each company works on its own chemical series
and holds different amounts of data and different assays. Three pure,
seeded partitioners model this; each returns one sorted index array per
partner (plus, for by-endpoint, the endpoints each partner holds).

- :func:`scaffold_dirichlet_partition`: label-free "scaffold skew" after
  FedChem (Zhu et al. 2022, "Federated learning of molecular properties with
  graph neural networks in a heterogeneous setting", Patterns 3:100521).
  Whole Murcko-scaffold groups are assigned to partners: each group draws a
  partner preference from Dirichlet(alpha * 1_N), damped for partners that
  are already large, and goes to the strongest preference. Small alpha gives
  strongly skewed chemistry; large alpha approaches a scaffold-wise IID
  split. Scaffolds never straddle partners.
- :func:`quantity_skew_partition`: partner sizes drawn from Dirichlet(alpha),
  molecules otherwise random (or scaffold groups kept whole when
  ``smiles`` is given, i.e. quantity plus scaffold skew).
- :func:`by_endpoint_partition`: each partner holds different endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from chem.splits import scaffold_groups
from protocols.errors import ConfigError, DataError

__all__ = ["by_endpoint_partition", "quantity_skew_partition", "scaffold_dirichlet_partition"]

_MAX_REDRAWS = 50


def _check(n_partners: int, alpha: float) -> None:
    if n_partners < 1:
        raise ConfigError("partners", "must be at least 1", got=n_partners)
    if not alpha > 0:
        raise ConfigError("alpha", "must be positive", got=alpha, expected="alpha > 0")


def _groups_covering_all(smiles: Sequence[str]) -> list[list[int]]:
    """Scaffold groups; an unparsable SMILES is an error here, never a silent drop."""
    groups = scaffold_groups(smiles)
    if sum(len(g) for g in groups) != len(smiles):
        seen = {i for g in groups for i in g}
        bad = [i for i in range(len(smiles)) if i not in seen]
        raise DataError(
            f"{len(bad)} SMILES have no Murcko scaffold (RDKit cannot parse them)",
            got=[(i, smiles[i]) for i in bad[:5]],
            expected="standardised SMILES (chem.standardize / chem.tables.load_table)",
            fix="partition the valid rows that load_table returns",
        )
    return groups


def _assign_groups(groups: list[list[int]], shares: np.ndarray, rng: np.random.Generator
                   ) -> list[list[int]]:
    """Greedy: largest groups first, each to the partner furthest below its share."""
    total = sum(len(g) for g in groups)
    order = sorted(range(len(groups)), key=lambda i: (-len(groups[i]), rng.random()))
    filled = np.zeros(len(shares))
    parts: list[list[int]] = [[] for _ in shares]
    for i in order:
        deficit = shares * total - filled
        k = int(np.argmax(deficit + 1e-9 * rng.random(len(shares))))
        parts[k].extend(groups[i])
        filled[k] += len(groups[i])
    return parts


def scaffold_dirichlet_partition(smiles: Sequence[str], *, n_partners: int, alpha: float,
                                 seed: int, min_size: int = 1) -> list[np.ndarray]:
    """Scaffold-skewed partition (FedChem): whole scaffold groups per partner.

    Each scaffold group draws its own partner preference ``p ~ Dir(alpha)``; a
    group goes to ``argmax(p)`` weighted by how far that partner is below an
    equal share, so partners get comparable sizes but very different chemistry.
    Redraws (bounded) until every partner has ``min_size`` molecules.
    """
    _check(n_partners, alpha)
    groups = _groups_covering_all(smiles)
    n = len(smiles)
    if n < n_partners * min_size:
        raise DataError("too few molecules for the requested partners",
                        got=n, expected=f">= {n_partners * min_size}")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_REDRAWS):
        parts: list[list[int]] = [[] for _ in range(n_partners)]
        sizes = np.zeros(n_partners)
        order = rng.permutation(len(groups))
        for gi in order:
            pref = rng.dirichlet(np.full(n_partners, alpha))
            # Balance: a partner already far above the mean size is less likely to win.
            balance = np.exp(-sizes / max(1.0, n / n_partners))
            k = int(np.argmax(pref * balance))
            parts[k].extend(groups[gi])
            sizes[k] += len(groups[gi])
        if min(len(p) for p in parts) >= min_size:
            return [np.array(sorted(p), dtype=np.int64) for p in parts]
    raise DataError(
        "could not give every partner enough molecules",
        got=f"alpha={alpha}, partners={n_partners}, min_size={min_size}",
        expected=f"a partition found within {_MAX_REDRAWS} draws",
        fix="raise alpha, lower min-size, or use fewer partners",
    )


def quantity_skew_partition(n: int, *, n_partners: int, alpha: float, seed: int,
                            min_size: int = 1, smiles: Sequence[str] | None = None
                            ) -> list[np.ndarray]:
    """Partner sizes ~ Dir(alpha); with ``smiles``, scaffold groups stay whole."""
    _check(n_partners, alpha)
    if smiles is not None and len(smiles) != n:
        raise DataError("`smiles` must have one entry per molecule", got=len(smiles),
                        expected=f"{n} SMILES")
    groups = _groups_covering_all(smiles) if smiles is not None else None
    if n < n_partners * min_size:
        raise DataError("too few molecules for the requested partners",
                        got=n, expected=f">= {n_partners * min_size}")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_REDRAWS):
        shares = rng.dirichlet(np.full(n_partners, alpha))
        if groups is not None:
            parts = _assign_groups(groups, shares, rng)
        else:
            perm = rng.permutation(n)
            cuts = np.floor(np.cumsum(shares)[:-1] * n).astype(int)
            parts = [list(p) for p in np.split(perm, cuts)]
        if min(len(p) for p in parts) >= min_size:
            return [np.array(sorted(p), dtype=np.int64) for p in parts]
    raise DataError("could not give every partner enough molecules",
                    got=f"alpha={alpha}, partners={n_partners}, min_size={min_size}",
                    fix="raise alpha or lower min-size")


def by_endpoint_partition(endpoint_sizes: Mapping[str, int],
                          holders: Mapping[str, Sequence[int]], *, n_partners: int, seed: int
                          ) -> list[dict[str, np.ndarray]]:
    """Each partner holds only some endpoints.

    ``holders`` maps an endpoint to the partners that hold it; that endpoint's
    rows (``range(endpoint_sizes[e])``) are split randomly among them. Returns,
    per partner, endpoint -> row indices.
    """
    rng = np.random.default_rng(seed)
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n_partners)]
    for endpoint, partners in holders.items():
        if endpoint not in endpoint_sizes:
            raise ConfigError("holders", "unknown endpoint", got=endpoint,
                              expected=sorted(endpoint_sizes))
        bad = [p for p in partners if not 0 <= p < n_partners]
        if bad or not partners:
            raise ConfigError(f"holders.{endpoint}", "partner ids out of range", got=list(partners),
                              expected=f"a non-empty subset of 0..{n_partners - 1}")
        perm = rng.permutation(endpoint_sizes[endpoint])
        for p, chunk in zip(partners, np.array_split(perm, len(partners)), strict=True):
            out[p][endpoint] = np.sort(chunk).astype(np.int64)
    return out
