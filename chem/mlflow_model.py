"""An MLflow pyfunc model that predicts ADMET endpoints straight from SMILES.

The featurizer travels with the weights: a logged model holds the state dict
(``weights.npz``), the model spec and the featurization spec (JSON), and a
small manifest naming the standardiser version. Loading it rebuilds the
network and refuses (:class:`SpecMismatchError`) when the installed RDKit or
standardiser would compute different features than the ones it was trained
on.

The MLflow model is "models from code": its ``python_model`` is
``chem/mlflow_pyfunc.py`` from the installed fedadmet, so nothing is
pickled. ``load_predictor`` never calls ``mlflow.pyfunc.load_model`` (which
imports the folder's code, or unpickles ``python_model.pkl`` in older
formats): it reads ``MLmodel`` as YAML, refuses a folder carrying pickle
files, another loader, extra code paths or a code file that differs from the
installed one, and loads the ``.npz`` (``allow_pickle=False``) and JSON
artifacts itself.

Prediction standardises, featurises and predicts; the result has one column
per endpoint in original units (probabilities for classification) plus
``valid`` and ``error``. An invalid SMILES gives NaN predictions and the
reason, never an exception, so one bad row cannot sink a batch.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import rdkit
import torch
import yaml  # type: ignore[import-untyped]  # PyYAML (an mlflow dependency) ships no stubs
from mlflow.entities import LoggedModelOutput
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

from chem.featurizers import FeaturizationSpec, check_compatible, featurize
from chem.mlflow_client import disable_telemetry
from chem.models import ModelSpec, MultiTaskMLP, build_model, predict, set_weights
from chem.standardize import STANDARDIZER_VERSION, standardize_many
from protocols.atomic_files import write_json, write_npz
from protocols.errors import ConfigError, DataError, MissingColumnError, SpecMismatchError

__all__ = [
    "SMILES_COLUMN",
    "Predictor",
    "PredictorFiles",
    "SmilesPredictor",
    "load_predictor",
    "log_predictor",
    "save_predictor_files",
    "with_missing_predictions",
]

SMILES_COLUMN = "smiles"
WEIGHTS_FILE = "weights.npz"
MODEL_SPEC_FILE = "model_spec.json"
FEATURIZATION_SPEC_FILE = "featurization_spec.json"
MANIFEST_FILE = "predictor.json"
_ARTIFACT_FILES = {"weights": WEIGHTS_FILE, "model_spec": MODEL_SPEC_FILE,
                   "featurization_spec": FEATURIZATION_SPEC_FILE, "manifest": MANIFEST_FILE}
_RESERVED = ("valid", "error", SMILES_COLUMN)
# The models-from-code file MLflow copies into every saved model (never a pickle).
MODEL_CODE_FILE = Path(__file__).with_name("mlflow_pyfunc.py")
_CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
# Serialised Python objects: loading any of them can run code.
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib", ".dill", ".pt", ".pth")


class Predictor:
    """The in-process core: SMILES in, a DataFrame of predictions out."""

    def __init__(self, model: MultiTaskMLP, featurization_spec: FeaturizationSpec) -> None:
        check_compatible(featurization_spec)
        clash = [n for n in model.spec.endpoint_names if n in _RESERVED]
        if clash:
            raise ConfigError("model.endpoints", "endpoint names clash with output columns",
                              got=clash, expected=f"names other than {_RESERVED}")
        self.model = model.eval()
        self.model_spec = model.spec
        self.featurization_spec = featurization_spec

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Output columns before ``valid`` and ``error``."""
        return self.model_spec.endpoint_names

    def predict(self, smiles: object) -> pd.DataFrame:
        """Predictions for a DataFrame with a ``smiles`` column, or a sequence of SMILES."""
        values, index = _smiles_input(smiles)
        n = len(values)
        out = np.full((n, len(self.endpoints)), np.nan, dtype=np.float64)
        errors = [""] * n
        report = standardize_many(values, first_row=0)
        for bad in report.invalid:
            errors[bad.row] = bad.reason
        rows = report.rows
        std = report.smiles
        if std:
            try:
                features = featurize(std, self.featurization_spec, n_jobs=1)
            except ValueError:  # one molecule RDKit re-parses differently; isolate it
                features, rows = self._featurize_one_by_one(std, rows, errors)
            if len(rows):
                out[np.asarray(rows)] = predict(self.model, features)
        frame = pd.DataFrame(out, columns=list(self.endpoints), index=index)
        frame["valid"] = [not e for e in errors]
        frame["error"] = errors
        return frame

    def _featurize_one_by_one(self, std: list[str], rows: list[int], errors: list[str]
                              ) -> tuple[np.ndarray, list[int]]:
        kept_rows, parts = [], []
        for row, s in zip(rows, std, strict=True):
            try:
                parts.append(featurize([s], self.featurization_spec, n_jobs=1))
                kept_rows.append(row)
            except ValueError as exc:
                errors[row] = f"featurisation failed: {exc}"
        if not parts:
            return np.zeros((0, self.model_spec.input_dim), np.float32), []
        return np.concatenate(parts), kept_rows


def _smiles_input(smiles: object) -> tuple[list[object], pd.Index]:
    if isinstance(smiles, pd.DataFrame):
        if SMILES_COLUMN not in smiles.columns:
            raise MissingColumnError(SMILES_COLUMN, [str(c) for c in smiles.columns])
        col = smiles[SMILES_COLUMN]
        return [None if _is_missing(v) else v for v in col.tolist()], smiles.index
    if isinstance(smiles, str):
        raise DataError("predict() takes a list of SMILES, not one string", got=smiles,
                        fix="wrap it in a list: [smiles]")
    if isinstance(smiles, pd.Series | np.ndarray | Sequence):
        values = [None if _is_missing(v) else v for v in list(smiles)]
        return values, pd.RangeIndex(len(values))
    raise DataError("unsupported input for prediction", got=type(smiles).__name__,
                    expected="a pandas DataFrame with a 'smiles' column, or a list of str")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


class SmilesPredictor(PythonModel):
    """MLflow pyfunc wrapper around :class:`Predictor`; artifacts are the predictor files."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the network from the logged weights and specs."""
        disable_telemetry()  # MLflow loads this in its own process (serving, batch scoring)
        self.predictor = _load_files({k: Path(v) for k, v in context.artifacts.items()})

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per input SMILES: endpoint columns, ``valid`` and ``error``.

        Endpoint columns are nullable (``Float64``): an invalid row's prediction is
        missing, which ``mlflow models serve`` writes as JSON ``null``; a float NaN
        would be written as a bare ``NaN``, which strict JSON parsers reject.
        """
        if self.predictor is None:
            raise ConfigError("predictor", "the model was used before load_context ran",
                              fix="load it with mlflow.pyfunc.load_model or load_predictor")
        return with_missing_predictions(self.predictor.predict(model_input))


def with_missing_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every float column nullable ``Float64`` (NaN becomes missing)."""
    out = frame.copy()
    for name in out.columns:
        if pd.api.types.is_float_dtype(out[name].dtype):
            out[name] = out[name].astype("Float64")
    return out


@dataclass(frozen=True, kw_only=True)
class PredictorFiles:
    """Everything ``mlflow.pyfunc.save_model``/``log_model`` needs for one predictor."""

    directory: Path
    artifacts: dict[str, str]
    python_model: str  # models from code: the path of chem/mlflow_pyfunc.py
    signature: ModelSignature
    input_example: pd.DataFrame
    pip_requirements: list[str]
    model_spec: ModelSpec
    featurization_spec: FeaturizationSpec


def save_predictor_files(directory: str | Path, state_dict: Mapping[str, np.ndarray],
                         model_spec: ModelSpec | Mapping[str, Any],
                         featurization_spec: FeaturizationSpec | Mapping[str, Any]
                         ) -> PredictorFiles:
    """Write weights, specs and manifest into ``directory``, after checking they fit together."""
    mspec = model_spec if isinstance(model_spec, ModelSpec) else ModelSpec.from_dict(model_spec)
    fspec = (featurization_spec if isinstance(featurization_spec, FeaturizationSpec)
             else FeaturizationSpec.from_dict(featurization_spec))
    model = _build(mspec, state_dict)
    Predictor(model, fspec)  # refuses specs this site cannot reproduce, before writing
    directory = Path(directory)
    write_npz(directory / WEIGHTS_FILE,
              {k: np.asarray(v, dtype=np.float32) for k, v in state_dict.items()})
    write_json(directory / MODEL_SPEC_FILE, mspec.to_dict(), indent=2, sort_keys=True)
    write_json(directory / FEATURIZATION_SPEC_FILE, fspec.to_dict(), indent=2, sort_keys=True)
    write_json(directory / MANIFEST_FILE, {
        "format": "fedadmet-predictor/v1", "standardizer_version": STANDARDIZER_VERSION,
        "model_spec_digest": mspec.digest(), "featurization_spec_digest": fspec.digest()},
        indent=2, sort_keys=True)
    return PredictorFiles(
        directory=directory,
        artifacts={k: str(directory / f) for k, f in _ARTIFACT_FILES.items()},
        python_model=str(MODEL_CODE_FILE), signature=predictor_signature(mspec),
        input_example=pd.DataFrame({SMILES_COLUMN: ["CCO", "c1ccccc1O"]}),
        pip_requirements=pip_requirements(), model_spec=mspec, featurization_spec=fspec)


def predictor_signature(spec: ModelSpec) -> ModelSignature:
    """Input: a ``smiles`` string column; output: endpoints, ``valid``, ``error``."""
    outputs: list[ColSpec | TensorSpec] = [ColSpec("double", name) for name in spec.endpoint_names]
    outputs += [ColSpec("boolean", "valid"), ColSpec("string", "error")]
    return ModelSignature(inputs=Schema([ColSpec("string", SMILES_COLUMN)]),
                          outputs=Schema(outputs))


def pip_requirements() -> list[str]:
    """Pinned to what is installed: features are only reproducible with the same RDKit."""
    reqs = [f"mlflow=={mlflow.__version__}", f"rdkit=={rdkit.__version__}",
            f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}"]
    with contextlib.suppress(metadata.PackageNotFoundError):  # a source checkout has none
        reqs.append(f"fedadmet=={metadata.version('fedadmet')}")
    return reqs


def log_predictor(client: MlflowClient, files: PredictorFiles, *, run_id: str, name: str,
                  step: int = 0, registered_model_name: str | None = None,
                  version_tags: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """Log ``files`` as a pyfunc model of ``run_id`` through ``client``; (model URI, version).

    What ``mlflow.pyfunc.log_model`` does (logged model, artifacts, run output,
    registration) without the fluent API's process-wide URI and active run.
    """
    disable_telemetry()
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="fedadmet-pyfunc-") as tmp:
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(local), python_model=files.python_model, artifacts=files.artifacts,
            signature=files.signature, input_example=files.input_example,
            pip_requirements=files.pip_requirements,
            mlflow_model=mlflow.models.Model(artifact_path=model.artifact_location,
                                             run_id=run_id, model_id=model.model_id))
        client.log_model_artifacts(model.model_id, str(local))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    uri = f"models:/{model.model_id}"
    if registered_model_name is None:
        return uri, None
    try:
        client.get_registered_model(registered_model_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(registered_model_name)
    # The artifact location, not models:/: MLflow resolves that against the global URI.
    version = client.create_model_version(
        registered_model_name, source=str(model.artifact_location), run_id=run_id,
        tags=dict(version_tags or {}), model_id=model.model_id)
    return uri, str(version.version)


def load_predictor(path_or_uri: str | Path, *, tracking_uri: str | None = None) -> Predictor:
    """A :class:`Predictor` from predictor files, a saved MLflow model, or a model URI.

    URIs (``models:/name/3``, ``runs:/...``, ``models:/m-...``) are resolved
    against ``tracking_uri`` (the registry lives in the same store).
    """
    uri = str(path_or_uri)
    if isinstance(path_or_uri, Path) or ":/" not in uri:  # no scheme: a local folder
        return _load_local(Path(path_or_uri))
    disable_telemetry()
    with tempfile.TemporaryDirectory(prefix="fedadmet-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=_resolve_models_uri(uri, tracking_uri), dst_path=tmp,
                tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except mlflow.exceptions.MlflowException as exc:
            raise DataError("cannot download the model", got=uri,
                            expected="an existing model URI in the given tracking store",
                            fix=f"check the URI and --tracking-uri ({exc.message})") from None
        return _load_local(Path(local))


def _resolve_models_uri(uri: str, tracking_uri: str | None) -> str:
    """``models:/`` URIs to artifact locations, through a client bound to ``tracking_uri``.

    MLflow's own resolution of ``models:/`` uses the process-wide tracking URI;
    this one never does.
    """
    if not uri.startswith("models:/"):
        return uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = uri.removeprefix("models:/").strip("/")
    if "/" not in ref and "@" not in ref:
        return str(client.get_logged_model(ref).artifact_location)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    else:
        name, version = ref.rsplit("/", 1)
    return str(client.get_model_version_download_uri(name, version))


def _load_local(path: Path) -> Predictor:
    """Our own files only: no unpickling and no code from the folder, whatever it holds."""
    _refuse_pickles(path)
    if (path / MANIFEST_FILE).is_file():
        return _load_files({k: path / f for k, f in _ARTIFACT_FILES.items()})
    if (path / "MLmodel").is_file():
        return _load_files(_code_model_artifacts(path))
    raise DataError("no predictor found", got=str(path),
                    expected=f"a folder with {MANIFEST_FILE} or an MLmodel file")


def _refuse_pickles(path: Path) -> None:
    found = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                   if p.suffix.lower() in _PICKLE_SUFFIXES)
    if found:
        raise DataError("the model folder carries serialised Python objects, which can run "
                        "code when loaded", got=found[:5],
                        expected="weights as .npz and metadata as JSON only",
                        fix="use a model registered by this fedadmet version (models from "
                        "code); do not load this folder")


def _code_model_artifacts(path: Path) -> dict[str, Path]:
    """The artifact files of a fedadmet models-from-code folder, after checking its loader."""
    try:
        conf = yaml.safe_load((path / "MLmodel").read_text(encoding="utf-8"))
        flavors = conf["flavors"]
        pyfunc = flavors["python_function"]
        artifacts = {k: v["path"] for k, v in pyfunc["artifacts"].items()}
        code = path / Path(str(pyfunc["model_code_path"])).name
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise DataError("the MLmodel file is not a fedadmet SMILES predictor",
                        got=f"{path / 'MLmodel'}: {exc!r}") from None
    loader = pyfunc.get("loader_module")
    if (set(flavors) != {"python_function"} or loader != _CODE_LOADER
            or "python_model" in pyfunc or pyfunc.get("code")):
        raise DataError("the MLflow model uses an unexpected loader", got={
            "flavors": sorted(flavors), "loader_module": loader,
            "python_model": pyfunc.get("python_model"), "code": pyfunc.get("code")},
            expected=f"python_function only, loader {_CODE_LOADER}, no python_model, no code")
    if (code.name != MODEL_CODE_FILE.name or not code.is_file()
            or code.read_bytes() != MODEL_CODE_FILE.read_bytes()):
        raise DataError("the model's code file is not the installed fedadmet's", got=code.name,
                        expected=f"a copy of {MODEL_CODE_FILE}",
                        fix="re-register the model with this fedadmet version")
    root = path.resolve()
    files = {k: (path / v).resolve() for k, v in artifacts.items()}
    if set(files) != set(_ARTIFACT_FILES) or any(not f.is_relative_to(root)
                                                 for f in files.values()):
        raise DataError("the MLflow model's artifacts are not a fedadmet predictor's",
                        got=sorted(artifacts.items()), expected=sorted(_ARTIFACT_FILES))
    return files


def _load_files(files: Mapping[str, Path]) -> Predictor:
    manifest = json.loads(files["manifest"].read_text(encoding="utf-8"))
    mspec = ModelSpec.from_dict(json.loads(files["model_spec"].read_text(encoding="utf-8")))
    fspec = FeaturizationSpec.from_dict(
        json.loads(files["featurization_spec"].read_text(encoding="utf-8")))
    if manifest.get("model_spec_digest") != mspec.digest():
        raise SpecMismatchError("the model spec does not match the digest in its manifest",
                                got=mspec.digest(), expected=manifest.get("model_spec_digest"),
                                fix="re-export the model; its files were changed")
    if manifest.get("standardizer_version") != STANDARDIZER_VERSION:
        raise SpecMismatchError(
            "the model was trained with another SMILES standardiser",
            got=STANDARDIZER_VERSION, expected=manifest.get("standardizer_version"),
            fix="install the fedadmet version the model was trained with")
    with np.load(files["weights"], allow_pickle=False) as npz:
        state = {k: npz[k] for k in npz.files}
    return Predictor(_build(mspec, state), fspec)


def _build(spec: ModelSpec, state_dict: Mapping[str, np.ndarray]) -> MultiTaskMLP:
    model = build_model(spec)
    expected = {n for n, _ in model.named_parameters()}
    if set(state_dict) != expected:
        raise SpecMismatchError(
            "the weights do not fit the model spec",
            got=sorted(set(state_dict) ^ expected)[:8], expected="exactly the spec's parameters",
            fix="save the full state dict of a model built from this spec")
    set_weights(model, state_dict)
    return model


