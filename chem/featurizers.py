"""Versioned molecular featurizers: SMILES to feature matrices, with RDKit.

Every site in a federation must featurise identically, so a featurizer is
named with a version (``ecfp4-count-2048/v1``) and described by a
:class:`FeaturizationSpec` (name, version, parameters, RDKit version,
standardiser version) whose SHA-256 digest the coordinator announces and each
participant recomputes. A site running another RDKit version gets a
:class:`SpecMismatchError` instead of silently training on different features.
The spec, the registry's parameters and the vector width live in
:mod:`chem.featurization_spec`, which needs no RDKit (the coordinator uses only
that); this module computes the features and checks the spec's pins against the
RDKit it runs.

Transforms are fixed functions with no data-dependent statistics (no
per-dataset scaling), for the same reason.

Featurizers:

- ``ecfp4-count-2048/v1``: Morgan radius 2 count fingerprint, 2048 bits,
  ``log1p`` of the counts (Rogers & Hahn 2010, J. Chem. Inf. Model. 50:742).
- ``rdkit2d/v1``: RDKit's 2D descriptor list (``Descriptors._descList``,
  sorted by name), transformed by ``sign(x) * log1p(|x|)``, non-finite
  values set to 0, clipped to [-20, 20].
- ``ecfp4-count-2048+rdkit2d/v1``: the two concatenated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import rdkit
from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors, rdFingerprintGenerator

from chem.featurization_spec import (
    FeaturizationSpec,
    available_featurizers,
    feature_dim,
    get_spec,
)
from protocols.errors import DataError, SpecMismatchError

# The spec's names are re-exported: most callers featurize and name the spec together.
__all__ = [
    "FeaturizationSpec",
    "available_featurizers",
    "check_compatible",
    "feature_dim",
    "featurize",
    "get_spec",
]

# Below these sizes a process pool costs more than it saves. Descriptors are ~100x
# slower per molecule than a Morgan fingerprint, so they go parallel much sooner.
_PARALLEL_MIN_MOLECULES = {"ecfp4-count-2048/v1": 1500}
_PARALLEL_MIN_DEFAULT = 64


# ---------------------------------------------------------------- featurizers
def _morgan_counts(mols: Sequence[Chem.Mol], *, radius: int, n_bits: int) -> np.ndarray:
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.empty((len(mols), n_bits), dtype=np.float32)
    for i, mol in enumerate(mols):
        out[i] = gen.GetCountFingerprintAsNumPy(mol)
    np.log1p(out, out=out)
    return out


@lru_cache(maxsize=1)
def _descriptor_functions() -> tuple[tuple[str, Callable[[Chem.Mol], float]], ...]:
    return tuple(sorted(Descriptors._descList, key=lambda item: item[0]))


def _rdkit2d(mols: Sequence[Chem.Mol]) -> np.ndarray:
    funcs = _descriptor_functions()
    out = np.zeros((len(mols), len(funcs)), dtype=np.float64)
    for i, mol in enumerate(mols):
        for j, (_, fn) in enumerate(funcs):
            try:
                out[i, j] = fn(mol)
            except Exception:  # a few descriptors fail on exotic molecules
                out[i, j] = math.nan
    out = np.sign(out) * np.log1p(np.abs(out))
    out[~np.isfinite(out)] = 0.0
    np.clip(out, -20.0, 20.0, out=out)
    return out.astype(np.float32)


def _ecfp(mols: Sequence[Chem.Mol], params: Mapping[str, Any]) -> np.ndarray:
    return _morgan_counts(mols, radius=int(params["radius"]), n_bits=int(params["n_bits"]))


def _ecfp_rdkit2d(mols: Sequence[Chem.Mol], params: Mapping[str, Any]) -> np.ndarray:
    return np.concatenate([_ecfp(mols, params), _rdkit2d(mols)], axis=1)


# key -> how to compute it (its parameters and width: chem.featurization_spec)
_COMPUTE: dict[str, Callable[[Sequence[Chem.Mol], Mapping[str, Any]], np.ndarray]] = {
    "ecfp4-count-2048/v1": _ecfp,
    "rdkit2d/v1": lambda mols, _p: _rdkit2d(mols),
    "ecfp4-count-2048+rdkit2d/v1": _ecfp_rdkit2d,
}


def _check_pins(spec: FeaturizationSpec) -> None:
    """The spec's RDKit version and descriptor count are what this RDKit computes."""
    if spec.rdkit_version != rdkit.__version__:
        raise SpecMismatchError(
            f"featurization spec {spec.key} names another RDKit than this site runs",
            got=rdkit.__version__, expected=spec.rdkit_version,
            fix=f"install RDKit {spec.rdkit_version} (this site has {rdkit.__version__}) "
            "so that features match across sites; do not train on mismatched features")
    pinned = spec.params.get("n_descriptors")
    if pinned is not None and pinned != len(_descriptor_functions()):
        raise SpecMismatchError(
            f"featurization spec {spec.key} pins another number of RDKit descriptors",
            got=len(_descriptor_functions()), expected=pinned,
            fix="install the RDKit release this fedadmet pins "
            "(chem.featurization_spec.RDKIT2D_DESCRIPTORS) or a fedadmet release that "
            "pins this RDKit's count")


def check_compatible(spec: FeaturizationSpec) -> None:
    """Refuse a spec this site cannot reproduce bit for bit."""
    local = get_spec(spec.key)
    if local.digest() == spec.digest():
        _check_pins(spec)
        return
    if spec.rdkit_version != local.rdkit_version:
        fix = (f"install RDKit {spec.rdkit_version} (this site has {local.rdkit_version}) "
               "so that features match across sites; do not train on mismatched features")
    elif spec.standardizer_version != local.standardizer_version:
        fix = (f"install the fedadmet release with standardiser {spec.standardizer_version} "
               f"(this site has {local.standardizer_version})")
    else:
        fix = ("the featurizer parameters differ; install the fedadmet release the "
               "federation announces")
    raise SpecMismatchError(
        f"featurization spec {spec.key} differs from what this site computes",
        got=spec.to_dict(), expected=local.to_dict(), fix=fix,
    )


def _featurize_chunk(args: tuple[str, list[str]]) -> np.ndarray:
    key, smiles = args
    params, fn = get_spec(key).params, _COMPUTE[key]
    mols = []
    # RDKit logs to stderr from C++; silence it for parsing and descriptor code alike.
    with rdBase.BlockLogs():
        for s in smiles:
            mol = Chem.MolFromSmiles(s)
            if mol is None:
                raise DataError("featurize() needs standardised, valid SMILES", got=s,
                                expected="SMILES from chem.standardize.standardize_smiles",
                                fix="standardise the column first (chem.tables.load_table "
                                "does) and drop the rows it reports as invalid")
            mols.append(mol)
        return fn(mols, params)


def featurize(smiles: Sequence[str], spec: FeaturizationSpec, *,
              cache_dir: Path | None = None, n_jobs: int | None = None) -> np.ndarray:
    """Features (float32, shape (N, dim)) for standardised SMILES.

    With ``cache_dir`` the result is read from, or written to, the
    content-addressed feature cache (see :mod:`chem.feature_cache`). Large
    inputs are split into chunks across ``n_jobs`` processes (default: all
    cores).
    """
    check_compatible(spec)
    smiles = list(smiles)
    if cache_dir is not None:
        from chem.feature_cache import FeatureCache

        cache = FeatureCache(cache_dir)
        hit = cache.get(smiles, spec)
        if hit is not None:
            return hit
    features = _compute(smiles, spec.key, n_jobs)
    if cache_dir is not None:
        cache.put(smiles, spec, features)
    return features


def _compute(smiles: list[str], key: str, n_jobs: int | None) -> np.ndarray:
    jobs = n_jobs or os.cpu_count() or 1
    if jobs <= 1 or len(smiles) < _PARALLEL_MIN_MOLECULES.get(key, _PARALLEL_MIN_DEFAULT):
        if not smiles:
            dim = _featurize_chunk((key, ["C"])).shape[1]
            return np.zeros((0, dim), dtype=np.float32)
        return _featurize_chunk((key, smiles))
    size = math.ceil(len(smiles) / (jobs * 4))
    chunks = [(key, smiles[i:i + size]) for i in range(0, len(smiles), size)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("fork")) as pool:
        parts = list(pool.map(_featurize_chunk, chunks))
    return np.concatenate(parts, axis=0)
