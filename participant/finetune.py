"""Fine-tuning the federated model on a member's own data, on site.

The member starts from the global model (its trunk, and the endpoint's head if
the consortium has one) and fits one endpoint on local data, early-stopping on
a held-out *scaffold* split of that data (``chem.training.fit``). Two modes:

- ``head-only``: the federated trunk is frozen; only the endpoint's head moves,
  so every other head of the global model stays valid and is kept;
- ``full``: the trunk moves too, at ``trunk_lr_factor`` times the head's rate.
  The other heads no longer match the moved trunk, so the result holds only
  the fine-tuned endpoint.

:func:`adapt` is the pure core (arrays in, model and metrics out).
:func:`run_finetune` is the shell: it loads the model and the data, logs the
run to the site's local MLflow store (``participant.tracking``) and registers
the result there. Nothing here talks to the coordinator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from chem.featurizers import FeaturizationSpec
from chem.metrics import HIGHER_IS_BETTER, endpoint_metrics, headline_metric, mean_predictor_metrics
from chem.mlflow_model import load_predictor
from chem.models import ModelSpec, MultiTaskMLP, build_model, get_weights, predict, set_weights
from chem.tables import TableReport
from chem.training import FitResult, Split, fit
from participant.config import EndpointColumn, ParticipantConfig
from participant.data import load_site_data
from participant.tracking import LoggedModel, ParticipantTracker
from protocols.endpoints import EndpointSpec, Task
from protocols.errors import ConfigError, DataError

__all__ = ["FineTuneOptions", "FineTuneOutcome", "FineTuneReport", "adapt", "run_finetune"]

Mode = Literal["head-only", "full"]
MODES: tuple[Mode, ...] = ("head-only", "full")


@dataclass(frozen=True, kw_only=True)
class FineTuneOptions:
    """What to fine-tune and how; validated on construction."""

    endpoint: str
    task: Task | None = None
    mode: Mode = "full"
    trunk_lr_factor: float = 0.1
    epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("--mode", "unknown fine-tuning mode", got=self.mode,
                              expected=" | ".join(MODES))
        if self.task is not None and self.task not in ("regression", "classification"):
            raise ConfigError("--task", "unknown task", got=self.task,
                              expected="regression | classification")
        if not 0.0 <= self.trunk_lr_factor <= 1.0:
            raise ConfigError("--trunk-lr-factor", "must be in [0, 1]", got=self.trunk_lr_factor,
                              fix="use --mode head-only to freeze the trunk entirely")
        for key, value in (("--epochs", self.epochs), ("--patience", self.patience),
                           ("--batch-size", self.batch_size)):
            if value < 1:
                raise ConfigError(key, "must be at least 1", got=value)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("--lr", "must be a positive number", got=self.lr)


@dataclass(frozen=True, kw_only=True)
class FineTuneOutcome:
    """The fine-tuned model and the validation metric before and after."""

    model: MultiTaskMLP
    endpoint: str
    task: Task
    metric: str
    before: float
    before_model: str
    after: float
    fit: FitResult
    n_train: int
    n_valid: int
    new_head: bool

    @property
    def improved(self) -> bool:
        """Whether the validation metric got better (NaN never counts as better)."""
        if HIGHER_IS_BETTER[self.metric]:
            return self.after > self.before
        return self.after < self.before


def _metric(y: np.ndarray, pred: np.ndarray, mask: np.ndarray, task: Task) -> float:
    name = headline_metric(task)
    return endpoint_metrics(y, pred, mask, ["e"], [task])["e"].get(name, math.nan)


def _endpoint(spec: ModelSpec, options: FineTuneOptions, train: Split) -> tuple[EndpointSpec, bool]:
    """The endpoint's spec: the consortium's (agreed scaling), or a new one from local labels."""
    for e in spec.endpoints:
        if e.name == options.endpoint:
            if options.task is not None and options.task != e.task:
                raise ConfigError("--task", f"contradicts the model's task for {e.name}",
                                  got=options.task, expected=e.task,
                                  fix="leave --task out for an endpoint the model has")
            return e, False
    if options.task is None:
        raise ConfigError("--task", f"is required: the model has no head for {options.endpoint}",
                          got=None, expected="regression | classification",
                          fix=f"pass --task; the model's endpoints are {list(spec.endpoint_names)}")
    if options.task == "classification":
        return EndpointSpec(name=options.endpoint, task="classification"), True
    y = train.y[train.mask[:, 0] > 0, 0]
    # a new head's target scaling comes from this site's own labels; it never leaves the site
    return EndpointSpec(name=options.endpoint, task="regression", target_offset=float(y.mean()),
                        target_scale=float(y.std()) or 1.0), True


def adapt(global_model: MultiTaskMLP, train: Split, valid: Split,
          options: FineTuneOptions) -> FineTuneOutcome:
    """Fine-tune a copy of ``global_model`` on one endpoint.

    ``train``/``valid`` carry that endpoint's labels as a single column (original
    units, mask 1 where labelled). ``global_model`` is not modified.
    """
    n_train, n_valid = int(train.mask[:, 0].sum()), int(valid.mask[:, 0].sum())
    if n_train < 2 or n_valid < 1:
        raise DataError(f"too few labelled molecules to fine-tune {options.endpoint}",
                        got={"train": n_train, "valid": n_valid},
                        expected="at least 2 for training and 1 for validation",
                        fix="check --column, or add data")
    spec = global_model.spec
    endpoint, new_head = _endpoint(spec, options, train)
    if options.mode == "head-only":
        local = spec.with_endpoints([endpoint]) if new_head else spec
    else:
        local = ModelSpec(input_dim=spec.input_dim, hidden_dims=spec.hidden_dims,
                          dropout=spec.dropout, activation=spec.activation,
                          endpoints=(endpoint,), extra=spec.extra)
    model = build_model(local, seed=options.seed)
    set_weights(model, get_weights(global_model), strict=False)
    j = local.endpoint_names.index(endpoint.name)

    def widen(s: Split) -> Split:
        y = np.zeros((len(s.x), len(local.endpoints)), np.float32)
        m = np.zeros_like(y)
        y[:, j], m[:, j] = np.nan_to_num(s.y[:, 0]), s.mask[:, 0]
        return Split(s.x, y, m)

    task = endpoint.task
    if new_head:
        before_model = "mean predictor (the model has no head for it)"
        per = mean_predictor_metrics(train.y, train.mask, valid.y, valid.mask, ["e"], [task])
        before = per["e"].get(headline_metric(task), math.nan)
    else:
        before_model = "global model"
        col = spec.endpoint_names.index(endpoint.name)
        before = _metric(valid.y, predict(global_model, valid.x)[:, [col]], valid.mask, task)
    result = fit(model, widen(train), widen(valid), epochs=options.epochs, lr=options.lr,
                 batch_size=options.batch_size, patience=options.patience, seed=options.seed,
                 freeze_trunk=options.mode == "head-only",
                 trunk_lr_factor=options.trunk_lr_factor)
    after = _metric(valid.y, predict(model, valid.x)[:, [j]], valid.mask, task)
    return FineTuneOutcome(model=model, endpoint=endpoint.name, task=task,
                           metric=headline_metric(task), before=before, before_model=before_model,
                           after=after, fit=result, n_train=n_train, n_valid=n_valid,
                           new_head=new_head)


# ---------------------------------------------------------------- shell
@dataclass(frozen=True, kw_only=True)
class FineTuneReport:
    """What :func:`run_finetune` did: the outcome, the run, the registered model, the data."""

    outcome: FineTuneOutcome
    run_id: str
    logged: LoggedModel
    data: TableReport

    @property
    def invalid_rows(self) -> int:
        """Rows and label cells that were rejected (listed in :attr:`data`)."""
        return len(self.data.invalid)


def _task_for(cfg: ParticipantConfig, options: FineTuneOptions, spec: ModelSpec) -> Task:
    if options.endpoint in spec.endpoint_names:
        return spec.endpoints[spec.endpoint_names.index(options.endpoint)].task
    configured = {e.endpoint: e.task for e in cfg.data.endpoints}
    task = options.task or configured.get(options.endpoint)
    if task is None:
        raise ConfigError("--task", f"is required: the model has no head for {options.endpoint} "
                          "and participant.toml has no [endpoints] table for it",
                          expected="regression | classification")
    return task


def load_endpoint_splits(cfg: ParticipantConfig, fspec: FeaturizationSpec, *,
                         files: Sequence[Path], endpoint: str, column: str, task: Task,
                         encoding: str | None = None) -> tuple[Split, Split, TableReport]:
    """One endpoint's scaffold train/validation splits of ``files`` (the site's own seed)."""
    data_cfg = dataclasses.replace(cfg.data, files=tuple(Path(f).resolve() for f in files),
                                   endpoints=(EndpointColumn(endpoint=endpoint, column=column,
                                                             task=task),),
                                   encoding=encoding or cfg.data.encoding)
    data = load_site_data(dataclasses.replace(cfg, data=data_cfg), fspec)
    return (Split(data.x_train, data.y_train, data.mask_train),
            Split(data.x_valid, data.y_valid, data.mask_valid), data.report)


def _check_enough(train: Split, valid: Split, report: TableReport, endpoint: str,
                  column: str) -> None:
    """Too few labels, said in terms of the file: duplicates merge into one structure."""
    n_train, n_valid = int(train.mask[:, 0].sum()), int(valid.mask[:, 0].sum())
    if n_train >= 2 and n_valid >= 1:
        return
    labelled = n_train + n_valid
    if report.merged.get(endpoint):
        raise DataError(
            f"too few distinct structures to fine-tune {endpoint}: the labelled rows of "
            f"column `{column}` are {labelled} distinct standardised structures after "
            f"{report.merged[endpoint]} duplicate rows were merged",
            got={"train": n_train, "valid": n_valid, "data": report.summary()},
            expected="at least 2 structures for training and 1 for validation",
            fix="add distinct molecules: repeated measurements of one structure count once "
                "(docs/threat-model.md, privacy unit)")
    raise DataError(f"too few labelled molecules to fine-tune {endpoint}",
                    got={"train": n_train, "valid": n_valid, "data": report.summary()},
                    expected="at least 2 for training and 1 for validation",
                    fix=f"check --column (used: `{column}`), or add data")


def run_finetune(cfg: ParticipantConfig, *, model_ref: str, options: FineTuneOptions,
                 files: Sequence[Path] = (), column: str | None = None,
                 register_as: str | None = None, encoding: str | None = None,
                 unsafe_allow_remote_tracking: bool = False) -> FineTuneReport:
    """Load the global model and local data, fine-tune, log and register locally."""
    predictor = load_predictor(model_ref, tracking_uri=cfg.tracking_uri_or_default)
    spec = predictor.model_spec
    task = _task_for(cfg, options, spec)
    configured = {e.endpoint: e.column for e in cfg.data.endpoints}
    column = column or configured.get(options.endpoint, options.endpoint)
    train, valid, data = load_endpoint_splits(
        cfg, predictor.featurization_spec, files=files or cfg.data.files,
        endpoint=options.endpoint, column=column, task=task, encoding=encoding)
    _check_enough(train, valid, data, options.endpoint, column)
    tracker = ParticipantTracker.for_config(
        cfg, unsafe_allow_remote_tracking=unsafe_allow_remote_tracking)
    params = {"base_model": model_ref, "endpoint": options.endpoint, "column": column,
              "task": task, "mode": options.mode, "trunk_lr_factor": options.trunk_lr_factor,
              "epochs": options.epochs, "patience": options.patience, "lr": options.lr,
              "batch_size": options.batch_size, "seed": options.seed,
              "data": ", ".join(str(f) for f in (files or cfg.data.files)),
              "valid_fraction": cfg.data.valid_fraction, "split_seed": cfg.data.split_seed}
    with tracker.start_finetune(run_name=f"finetune-{options.endpoint}", params=params,
                                tags={"fedadmet.endpoint": options.endpoint}) as run:
        outcome = adapt(predictor.model, train, valid, options)
        for epoch, (tl, vl) in enumerate(zip(outcome.fit.train_loss, outcome.fit.valid_loss,
                                              strict=True)):
            run.log_metrics({"train_loss": tl, "valid_loss": vl}, step=epoch)
        final = {f"valid_{outcome.metric}_before": outcome.before,
                 f"valid_{outcome.metric}_after": outcome.after,
                 "best_epoch": float(outcome.fit.best_epoch), "n_train": float(outcome.n_train),
                 "n_valid": float(outcome.n_valid)}
        run.log_metrics({k: v for k, v in final.items() if math.isfinite(v)}, step=0)
        logged = run.log_model(get_weights(outcome.model), outcome.model.spec,
                               predictor.featurization_spec,
                               register_as=register_as or f"finetuned-{options.endpoint}",
                               version_tags={"fedadmet.base_model": model_ref[:200],
                                             "fedadmet.mode": options.mode})
    return FineTuneReport(outcome=outcome, run_id=run.run_id, logged=logged, data=data)
