"""Four-arm comparisons: the gap-closed formula and a tiny synthetic federation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chem.featurizers import featurize, get_spec
from chem.models import ModelSpec, build_model, get_weights, predict, set_weights
from chem.tables import load_table
from chem.training import Split, fit
from protocols.endpoints import EndpointSpec
from simulations.comparisons import compare_partners, gap_closed, refit_private_heads, site_spec

FEATURIZER = "ecfp4-count-2048/v1"
RINGS = ["c1ccccc1", "C1CCCCC1", "c1ccncc1", "C1CCNCC1", "c1ccsc1", "C1CCOC1",
         "c1ccc2ccccc2c1", "C1CC1", "c1cnccn1", "C1CCCC1", "c1ccoc1", "C1CCCCCC1"]


def test_gap_closed_known_values_for_lower_is_better_mae() -> None:
    assert gap_closed(0.9, 0.7, 0.6) == pytest.approx(2 / 3)
    assert gap_closed(0.9, 1.0, 0.6) == pytest.approx(-1 / 3)  # federation made it worse


def test_gap_closed_known_values_for_higher_is_better_auroc() -> None:
    assert gap_closed(0.70, 0.80, 0.90) == pytest.approx(0.5)
    assert gap_closed(0.70, 0.65, 0.90) == pytest.approx(-0.25)


def test_gap_closed_is_nan_when_there_is_no_gap() -> None:
    assert math.isnan(gap_closed(0.8, 0.7, 0.8))
    assert math.isnan(gap_closed(0.8, 0.7, 0.8 + 1e-9))
    assert math.isnan(gap_closed(math.nan, 0.7, 0.8))


def test_gap_closed_is_nan_when_pooled_does_not_beat_local() -> None:
    # MAE: pooled worse than local-only; AUROC: pooled below local-only
    assert math.isnan(gap_closed(0.80, 0.70, 0.85, higher_is_better=False))
    assert math.isnan(gap_closed(0.80, 0.85, 0.75, higher_is_better=True))
    # the same numbers without a direction keep the bare formula
    assert gap_closed(0.80, 0.70, 0.85) == pytest.approx(-2.0)


def test_gap_closed_is_nan_when_the_gap_is_below_min_gap() -> None:
    assert math.isnan(gap_closed(0.800, 0.70, 0.795, higher_is_better=False, min_gap=0.01))
    assert gap_closed(0.80, 0.75, 0.70, higher_is_better=False, min_gap=0.01) == \
        pytest.approx(0.5)


@given(local=st.floats(-10, 10), pooled=st.floats(-10, 10))
def test_gap_closed_is_zero_at_local_and_one_at_pooled(local: float, pooled: float) -> None:
    if abs(pooled - local) < 1e-3:
        assert math.isnan(gap_closed(local, pooled, pooled)) or abs(pooled - local) >= 1e-6
        return
    assert gap_closed(local, local, pooled) == pytest.approx(0.0)
    assert gap_closed(local, pooled, pooled) == pytest.approx(1.0)


def _molecules(rings: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for r, ring in enumerate(rings):
        for n in range(1, 9):
            for tail in ("", "O", "N", "F"):
                y = 0.4 * n + (0.8 if tail == "O" else 0.0) + 0.2 * r + rng.normal(0, 0.05)
                rows.append({"smiles": ring + "C" * n + tail, "y": y})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def partners(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("partners")
    dirs = []
    for k in range(2):
        mine = RINGS[6 * k: 6 * k + 6]
        d = root / f"partner-{k}"
        d.mkdir()
        # train and test never share a ring system (scaffold-disjoint, like the real split)
        _molecules(mine[:5], seed=k).to_csv(d / "train.csv", index=False)
        _molecules(mine[5:], seed=10 + k).to_csv(d / "test.csv", index=False)
        dirs.append(d)
    return dirs


@pytest.mark.slow  # ~80 s on a loaded 2-core box: six non-private fits (chem.training.fit)
def test_four_arms_per_partner_and_local_only_beats_the_mean_predictor(
        partners: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = ModelSpec(input_dim=2048, hidden_dims=(64,), dropout=0.0,
                     endpoints=(EndpointSpec(name="y", task="regression"),))
    # stand-in for the federation's final global weights: a model fitted on partner 0 only
    table = load_table(partners[0] / "train.csv", endpoints={"y": "y"}, cache_dir=cache)
    x = featurize(list(table.smiles), get_spec(FEATURIZER), cache_dir=cache)
    y, m = np.nan_to_num(table.labels), table.mask
    donor = build_model(spec, seed=0)
    fit(donor, Split(x, y, m), Split(x[:20], y[:20], m[:20]), epochs=40, seed=0)
    rows = compare_partners(partner_dirs=partners, endpoints=["y"], tasks={"y": "regression"},
                            model=spec, global_weights=get_weights(donor), private_heads={},
                            featurizer=FEATURIZER, cache=cache, seed=0, epochs=40)
    got = {(r.partner, r.arm): r for r in rows}
    arms = ("mean-predictor", "local-only", "federated", "federated+finetune", "pooled")
    assert set(got) == {(k, a) for k in (0, 1) for a in arms}
    for k in (0, 1):
        assert all(got[(k, a)].metric == "mae" and got[(k, a)].n_test == 32 for a in arms)
        assert got[(k, "local-only")].value < got[(k, "mean-predictor")].value
    # partner 0's "federated" model was trained on its own data: it must beat the mean predictor
    assert got[(0, "federated")].value < got[(0, "mean-predictor")].value
    # the arms are different models, not one number copied four times
    assert len({round(got[(1, a)].value, 6) for a in arms}) >= 4


# ---------------------------------------------------------------- private heads (issue 17, 3)
def _two_endpoint_spec() -> ModelSpec:
    return ModelSpec(input_dim=16, hidden_dims=(32,), dropout=0.0,
                     endpoints=(EndpointSpec(name="shared", task="regression"),
                                EndpointSpec(name="mine", task="regression"),
                                EndpointSpec(name="tox", task="classification")))


def test_site_spec_scales_private_regression_heads_as_the_site_does() -> None:
    y = np.array([[1.0, 2.0, 1.0], [3.0, 6.0, 0.0], [5.0, 0.0, 1.0]])
    m = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1]], dtype=np.float32)
    spec = site_spec(_two_endpoint_spec(), {"mine", "tox"}, y, m, ["shared", "mine", "tox"])
    shared, mine, tox = spec.endpoints
    assert (shared.target_offset, shared.target_scale) == (0.0, 1.0)  # consortium: agreed
    assert (mine.target_offset, mine.target_scale) == (4.0, 2.0)  # masked row left out
    assert (tox.target_offset, tox.target_scale) == (0.0, 1.0)  # classification: none


def test_private_heads_are_refitted_to_the_global_trunk_and_nothing_else_moves() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 16)).astype(np.float32)
    y = np.stack([x[:, 0], 2.0 * x[:, 1] + x[:, 2], (x[:, 3] > 0)], axis=1).astype(np.float32)
    m = np.ones_like(y)
    names = ["shared", "mine", "tox"]
    spec = _two_endpoint_spec()
    global_weights = {k: v for k, v in get_weights(build_model(spec, seed=1)).items()
                      if not k.startswith(("heads.mine.", "heads.tox."))}
    model = build_model(spec, seed=2)  # private heads: fitted to some other trunk
    set_weights(model, global_weights, strict=True)
    before = get_weights(model)
    mae_before = float(np.abs(predict(model, x[200:])[:, 1] - y[200:, 1]).mean())
    refit_private_heads(model, Split(x[:160], y[:160], m[:160]),
                        Split(x[160:200], y[160:200], m[160:200]), private={"mine", "tox"},
                        endpoints=names, global_weights=global_weights, epochs=60, seed=0)
    after = get_weights(model)
    for k, v in global_weights.items():  # trunk and consortium head exactly as received
        assert np.array_equal(after[k], v), k
    assert not np.array_equal(after["heads.mine.weight"], before["heads.mine.weight"])
    mae_after = float(np.abs(predict(model, x[200:])[:, 1] - y[200:, 1]).mean())
    assert mae_after < 0.8 * mae_before
