"""chem.featurization_spec: the width and the RDKit pins a coordinator can know without RDKit."""

from __future__ import annotations

import dataclasses

import pytest
import rdkit

import chem.featurizers as featurizers
from chem.featurization_spec import (
    RDKIT2D_DESCRIPTORS,
    available_featurizers,
    feature_dim,
    get_spec,
    rdkit_version,
)
from chem.featurizers import check_compatible, featurize
from protocols.errors import ConfigError, SpecMismatchError

KNOWN_WIDTHS = {"ecfp4-count-2048/v1": 2048, "rdkit2d/v1": RDKIT2D_DESCRIPTORS,
                "ecfp4-count-2048+rdkit2d/v1": 2048 + RDKIT2D_DESCRIPTORS}


@pytest.mark.parametrize("key", sorted(KNOWN_WIDTHS))
def test_the_width_from_the_spec_is_the_width_rdkit_computes(key: str) -> None:
    spec = get_spec(key)
    assert feature_dim(spec) == KNOWN_WIDTHS[key]
    assert featurize(["CCO", "c1ccccc1O"], spec, n_jobs=1).shape == (2, KNOWN_WIDTHS[key])


def test_every_registered_featurizer_has_a_known_width() -> None:
    assert set(available_featurizers()) == set(KNOWN_WIDTHS)


def test_the_pinned_descriptor_count_is_this_rdkits() -> None:
    assert len(featurizers._descriptor_functions()) == RDKIT2D_DESCRIPTORS


def test_the_rdkit_version_read_without_import_is_spelled_as_rdkit_spells_it() -> None:
    assert rdkit_version() == rdkit.__version__


def test_a_site_whose_rdkit_has_other_descriptors_refuses_the_spec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fewer = featurizers._descriptor_functions()[:-1]
    monkeypatch.setattr(featurizers, "_descriptor_functions", lambda: fewer)
    check_compatible(get_spec("ecfp4-count-2048/v1"))  # no descriptors: nothing to pin
    with pytest.raises(SpecMismatchError, match="number of RDKit descriptors"):
        check_compatible(get_spec("ecfp4-count-2048+rdkit2d/v1"))


def test_a_site_whose_rdkit_module_differs_from_its_metadata_refuses_the_spec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rdkit, "__version__", "2019.03.1")
    with pytest.raises(SpecMismatchError, match="another RDKit") as err:
        check_compatible(get_spec("ecfp4-count-2048/v1"))
    assert "2019.03.1" in str(err.value)


def test_a_spec_without_its_width_parameters_is_a_clear_error() -> None:
    spec = dataclasses.replace(get_spec("rdkit2d/v1"), params={"transform": "sign*log1p|x|"})
    with pytest.raises(ConfigError, match="width"):
        feature_dim(spec)
    with pytest.raises(ConfigError, match="unknown featurizer"):
        get_spec("morgan")
