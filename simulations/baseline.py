"""Centralised baseline following the TDC ADMET-group protocol.

Protocol (Huang et al. 2021, TDC ADMET Benchmark Group), re-created offline:

1. a fixed test set: scaffold split of the whole dataset with seed 42 at
   fractions 0.8 / 0 / 0.2 (TDC's official test files were made by a
   scaffold split whose exact code is not public, so our numbers are
   comparable in spirit, not identical);
2. for each seed, a scaffold split of the remaining 80 % into 0.875 / 0.125
   train and validation;
3. train the shipped multi-task MLP with early stopping on validation;
4. report the test metric (MAE for regression, AUROC for classification) as
   mean ± population standard deviation over seeds, rounded to 3 decimals as
   TDC does.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chem.featurizers import featurize, get_spec
from chem.metrics import endpoint_metrics
from chem.models import ModelSpec, build_model, predict
from chem.splits import scaffold_split
from chem.training import Split, fit
from protocols.endpoints import EndpointSpec
from simulations.datasets import dataset, load_dataset

__all__ = ["BaselineConfig", "BaselineResult", "parse_seeds", "protocol_split", "run_baseline"]

TEST_SEED = 42


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """Model and training settings of the shipped baseline MLP."""

    featurizer: str = "ecfp4-count-2048+rdkit2d/v1"
    hidden_dims: tuple[int, ...] = (1024, 256)
    dropout: float = 0.2
    lr: float = 5e-4
    weight_decay: float = 1e-5
    batch_size: int = 64
    epochs: int = 150
    patience: int = 15


@dataclass(kw_only=True)
class BaselineResult:
    """Per-seed and summary test metrics, with what produced them."""

    dataset: str
    metric: str
    seeds: list[int]
    per_seed: list[float]
    mean: float
    std: float
    config: dict[str, Any]
    featurization_spec_digest: str
    model_spec_digest: str
    n_train_valid: int
    n_test: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """``0.545 ± 0.006`` style summary."""
        return f"{self.mean:.3f} ± {self.std:.3f}"


def parse_seeds(text: str) -> list[int]:
    """``"1-5"`` or ``"1,3,5"`` to a list of ints."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def protocol_split(smiles: Sequence[str], *, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TDC ADMET-group split: fixed test (scaffold, seed 42, 0.8/0/0.2), then train/valid
    (scaffold, ``seed``, 0.875/0.125) of the rest. Returns indices into ``smiles``."""
    trval, _, test = scaffold_split(list(smiles), (0.8, 0.0, 0.2), seed=TEST_SEED)
    trval = np.asarray(trval)
    tr_local, va_local, _ = scaffold_split([smiles[i] for i in trval], (0.875, 0.125, 0.0),
                                           seed=seed)
    return trval[np.asarray(tr_local, dtype=np.intp)], trval[np.asarray(va_local, dtype=np.intp)], \
        np.asarray(test)


def run_baseline(name: str, *, seeds: Sequence[int], config: BaselineConfig = BaselineConfig(),
                 cache_dir: Path | None = None, max_molecules: int | None = None,
                 progress: Callable[[int, float], None] | None = None) -> BaselineResult:
    """Run the TDC-style protocol on a vendored dataset."""
    t0 = time.perf_counter()
    ds = dataset(name)
    table = load_dataset(name, cache_dir=cache_dir)
    smiles = list(table.smiles)
    y = np.asarray(table.labels, dtype=np.float64)
    mask = np.asarray(table.mask, dtype=np.float32)
    if max_molecules is not None and len(smiles) > max_molecules:
        keep = np.random.default_rng(0).choice(len(smiles), max_molecules, replace=False)
        keep.sort()
        smiles = [smiles[i] for i in keep]
        y, mask = y[keep], mask[keep]
    spec = get_spec(config.featurizer)
    x = featurize(smiles, spec, cache_dir=cache_dir)
    scores: list[float] = []
    model_digest = ""
    for k, seed in enumerate(seeds):
        tr, va, test = protocol_split(smiles, seed=seed)
        offset, scale = 0.0, 1.0
        if ds.task == "regression":
            offset, scale = float(y[tr, 0].mean()), float(y[tr, 0].std() or 1.0)
        endpoint = EndpointSpec(name=ds.endpoint, task=ds.task, unit=ds.unit,
                                target_offset=offset, target_scale=scale)
        mspec = ModelSpec(input_dim=x.shape[1], hidden_dims=config.hidden_dims,
                          dropout=config.dropout, endpoints=(endpoint,))
        model_digest = mspec.digest()
        model = build_model(mspec, seed=seed)
        torch.manual_seed(seed)
        fit(model, Split(x[tr], y[tr], mask[tr]), Split(x[va], y[va], mask[va]),
            epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
            batch_size=config.batch_size, patience=config.patience, seed=seed)
        pred = predict(model, x[test])
        metrics = endpoint_metrics(y[test], pred, mask[test], [ds.endpoint], [ds.task])
        scores.append(round(metrics[ds.endpoint][ds.metric], 3))
        if progress is not None:
            progress(k, scores[-1])
    return BaselineResult(
        dataset=name, metric=ds.metric, seeds=list(seeds), per_seed=scores,
        mean=round(float(np.mean(scores)), 3), std=round(float(np.std(scores)), 3),
        config=asdict(config), featurization_spec_digest=spec.digest(),
        model_spec_digest=model_digest, n_train_valid=len(tr) + len(va), n_test=len(test),
        seconds=time.perf_counter() - t0,
    )


def write_result(result: BaselineResult, out_dir: Path) -> Path:
    """Write ``baseline-<dataset>.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"baseline-{result.dataset}.json"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(result), indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
