"""Featurizers are versioned, deterministic, cached, and refuse foreign specs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chem.feature_cache import FeatureCache
from chem.featurizers import FeaturizationSpec, available_featurizers, featurize, get_spec
from chem.standardize import standardize_many
from protocols.errors import ConfigError, DataError, SpecMismatchError
from tests.chem.conftest import DRUGS

STD = standardize_many(DRUGS).smiles


def test_registry_names_are_versioned() -> None:
    names = available_featurizers()
    assert {"ecfp4-count-2048/v1", "rdkit2d/v1"} <= set(names)
    assert all("/v" in n for n in names)
    with pytest.raises(ConfigError):
        get_spec("ecfp4/v9")


def test_dimensions_and_transforms() -> None:
    ecfp = featurize(STD, get_spec("ecfp4-count-2048/v1"), n_jobs=1)
    assert ecfp.shape == (len(STD), 2048) and ecfp.dtype == np.float32
    # log1p of whole counts: expm1 recovers non-negative integers.
    counts = np.expm1(ecfp.astype(np.float64))
    assert ecfp.min() >= 0 and np.allclose(counts, np.round(counts), atol=1e-4)
    desc = featurize(STD, get_spec("rdkit2d/v1"), n_jobs=1)
    assert desc.shape[0] == len(STD) and np.isfinite(desc).all()
    assert np.abs(desc).max() <= 20.0


# Golden values. Morgan radius-2 counts of ethanol: 3 atom environments at radius 0 and 3 at
# radius 1; every radius-2 environment repeats the whole molecule and is dropped, so 6 in all.
# Aspirin (C9H8O4): 35 environments over 24 bits. The bit indices pin RDKit's hashing, so an
# RDKit or featurizer change that moves them fails here before sites disagree in production.
GOLDEN_ECFP = {
    "CCO": {80: 1, 222: 1, 294: 1, 807: 1, 1057: 1, 1410: 1},
    "CC(=O)Oc1ccccc1C(=O)O": {
        389: 1, 456: 1, 650: 2, 695: 1, 807: 3, 909: 1, 1017: 1, 1035: 1, 1047: 1, 1057: 1,
        1088: 2, 1199: 2, 1380: 2, 1410: 1, 1447: 1, 1468: 1, 1616: 1, 1729: 1, 1750: 2,
        1775: 1, 1873: 4, 1917: 2, 1970: 1, 1991: 1,
    },
}
# Descriptor values from the formulas (average molecular weight, Lipinski counts).
GOLDEN_DESCRIPTORS = {
    "CCO": {"MolWt": 46.069, "HeavyAtomCount": 3, "NumHDonors": 1, "NumHAcceptors": 1,
            "RingCount": 0},
    "CC(=O)Oc1ccccc1C(=O)O": {"MolWt": 180.159, "HeavyAtomCount": 13, "NumHDonors": 1,
                              "NumHAcceptors": 3, "RingCount": 1},
}


def test_ecfp_matches_golden_counts() -> None:
    smiles = list(GOLDEN_ECFP)
    x = featurize(smiles, get_spec("ecfp4-count-2048/v1"), n_jobs=1)
    for row, smi in zip(x, smiles, strict=True):
        nonzero = {int(i): round(float(np.expm1(row[i]))) for i in np.flatnonzero(row)}
        assert nonzero == GOLDEN_ECFP[smi], smi
    assert np.expm1(x[0]).sum() == pytest.approx(6.0)
    assert np.expm1(x[1]).sum() == pytest.approx(35.0)


def test_descriptors_match_golden_values() -> None:
    from chem.featurizers import _descriptor_functions

    names = [name for name, _ in _descriptor_functions()]
    smiles = list(GOLDEN_DESCRIPTORS)
    x = featurize(smiles, get_spec("rdkit2d/v1"), n_jobs=1).astype(np.float64)
    for row, smi in zip(x, smiles, strict=True):
        for name, value in GOLDEN_DESCRIPTORS[smi].items():
            # the transform is sign(x) * log1p(|x|); invert it
            got = float(np.expm1(row[names.index(name)]))
            assert got == pytest.approx(value, abs=2e-3), (smi, name)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from(STD), min_size=1, max_size=8))
def test_featurisation_is_deterministic(smiles: list[str]) -> None:
    spec = get_spec("ecfp4-count-2048/v1")
    a = featurize(smiles, spec, n_jobs=1)
    b = featurize(list(reversed(smiles)), spec, n_jobs=1)[::-1]
    assert np.array_equal(a, b)


def test_parallel_equals_serial() -> None:
    smiles = STD * 100  # above the parallel threshold
    spec = get_spec("ecfp4-count-2048/v1")
    assert np.array_equal(featurize(smiles, spec, n_jobs=1), featurize(smiles, spec, n_jobs=2))


def test_descriptors_go_parallel_early_and_match_serial() -> None:
    smiles = STD * 2  # 100 molecules: above the descriptor threshold, below the ECFP one
    spec = get_spec("rdkit2d/v1")
    assert np.array_equal(featurize(smiles, spec, n_jobs=1), featurize(smiles, spec, n_jobs=2))


def test_spec_digest_is_stable_across_processes() -> None:
    code = ("from chem.featurizers import get_spec; import json; print(json.dumps("
            "{k: get_spec(k).digest() for k in ['ecfp4-count-2048/v1', 'rdkit2d/v1']}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert json.loads(out.stdout) == {k: get_spec(k).digest()
                                      for k in ["ecfp4-count-2048/v1", "rdkit2d/v1"]}


def test_a_spec_from_another_rdkit_version_is_refused() -> None:
    spec = get_spec("ecfp4-count-2048/v1")
    foreign = FeaturizationSpec(name=spec.name, version=spec.version, params=spec.params,
                                rdkit_version="2019.03.1")
    assert foreign.digest() != spec.digest()
    with pytest.raises(SpecMismatchError) as err:
        featurize(STD, foreign)
    assert "install RDKit 2019.03.1" in str(err.value)


def test_a_spec_with_other_parameters_is_refused() -> None:
    spec = get_spec("ecfp4-count-2048/v1")
    tampered = FeaturizationSpec(name=spec.name, version=spec.version,
                                 params={**spec.params, "n_bits": 1024})
    with pytest.raises(SpecMismatchError) as err:
        featurize(STD, tampered)
    assert "parameters differ" in str(err.value)


def test_spec_round_trips_through_dict() -> None:
    spec = get_spec("rdkit2d/v1")
    assert FeaturizationSpec.from_dict(spec.to_dict()) == spec


def test_warm_cache_returns_identical_features(tmp_path: Path) -> None:
    spec = get_spec("ecfp4-count-2048/v1")
    cold = featurize(STD, spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert np.array_equal(featurize(STD, spec, cache_dir=tmp_path), cold)


def test_corrupted_cache_entry_is_recomputed(tmp_path: Path) -> None:
    spec = get_spec("ecfp4-count-2048/v1")
    cold = featurize(STD, spec, cache_dir=tmp_path)
    entry = next(tmp_path.glob("*.npz"))
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 0xFF
    entry.write_bytes(bytes(raw))
    assert FeatureCache(tmp_path).get(STD, spec) is None
    assert np.array_equal(featurize(STD, spec, cache_dir=tmp_path), cold)
    assert FeatureCache(tmp_path).get(STD, spec) is not None  # the entry was rewritten


def test_truncated_cache_entry_with_a_matching_checksum_is_a_miss(tmp_path: Path) -> None:
    spec = get_spec("ecfp4-count-2048/v1")
    cold = featurize(STD, spec, cache_dir=tmp_path)
    entry = next(tmp_path.glob("*.npz"))
    short = entry.read_bytes()[:-4]  # a crash mid-copy, with the checksum rewritten to match
    entry.write_bytes(short)
    entry.with_suffix(".sha256").write_text(hashlib.sha256(short).hexdigest())
    assert FeatureCache(tmp_path).get(STD, spec) is None
    assert np.array_equal(featurize(STD, spec, cache_dir=tmp_path), cold)


def test_warm_cache_hit_is_a_writable_float32_matrix(tmp_path: Path) -> None:
    spec = get_spec("ecfp4-count-2048/v1")
    featurize(STD, spec, cache_dir=tmp_path)
    hit = featurize(STD, spec, cache_dir=tmp_path)
    assert hit.dtype == np.float32 and hit.shape == (len(STD), 2048) and hit.flags.writeable


@pytest.mark.parametrize("key", ["ecfp4-count-2048/v1", "rdkit2d/v1"])
def test_sparse_and_dense_entries_round_trip_exactly(tmp_path: Path, key: str) -> None:
    spec = get_spec(key)
    cold = featurize(STD, spec, cache_dir=tmp_path, n_jobs=1)
    with np.load(next(tmp_path.glob("*.npz"))) as entry:
        assert ("indices" in entry.files) == (key.startswith("ecfp"))  # fingerprints are sparse
    warm = FeatureCache(tmp_path).get(STD, spec)
    assert warm is not None and warm.tobytes() == cold.tobytes()


def test_unstandardised_garbage_is_a_data_error() -> None:
    with pytest.raises(DataError, match="standardised"):
        featurize([STD[0], "C1CC"], get_spec("ecfp4-count-2048/v1"), n_jobs=1)


def test_cache_key_depends_on_molecules_order_and_spec() -> None:
    a, b = get_spec("ecfp4-count-2048/v1"), get_spec("rdkit2d/v1")
    keys = {FeatureCache.key(STD, a), FeatureCache.key(STD[::-1], a), FeatureCache.key(STD, b)}
    assert len(keys) == 3
