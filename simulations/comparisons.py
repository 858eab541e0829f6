"""What federation buys each partner, measured on the partner's own held-out test set.

Four arms per partner and endpoint:

1. **local-only**: the partner trains alone, non-privately (what it can do today);
2. **federated**: the final global model, with the partner's private heads refitted
   on site to that global trunk (trunk frozen, local validation split for early
   stopping); the heads as stored after the last round are scored too, as
   ``federated-stored-heads``, for private endpoints;
3. **federated + fine-tune**: the transfer-learning path: start from the federated
   trunk and heads and fine-tune on the partner's own data, early stopping on a
   local validation split. The trunk's learning rate (a tenth of the heads', or
   the same) is chosen on that local validation split, as a member would;
4. **pooled**: everyone's training data in one place, non-private: the
   unattainable upper bound.

Figure of merit: the share of the local-only-to-pooled gap the federation
closes, ``(m_fed - m_local) / (m_pooled - m_local)``, which is sign-correct for
both lower-is-better (MAE) and higher-is-better (AUROC) metrics. It is NaN
(undefined, and reported as such) when pooling does not beat local-only by at
least ``min_gap`` in the metric's own direction: on small test sets the
denominator is then metric noise, and the ratio means nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from chem.featurizers import featurize, get_spec
from chem.metrics import endpoint_metrics, headline_metric, mean_predictor_metrics
from chem.models import ModelSpec, MultiTaskMLP, build_model, predict, set_weights
from chem.splits import scaffold_split
from chem.tables import load_table
from chem.training import Split, fit
from protocols.endpoints import EndpointSpec

__all__ = ["MIN_GAP", "ArmResult", "compare_partners", "gap_closed", "refit_private_heads",
           "site_spec"]


@dataclass(frozen=True, kw_only=True)
class ArmResult:
    """One metric value for one partner, endpoint and arm."""

    partner: int
    endpoint: str
    metric: str
    arm: str
    value: float
    n_test: int


TRUNK_LR_FACTORS = (0.1, 1.0)  # fine-tune: trunk at a tenth of the heads' rate, or the same
MIN_GAP = 0.01  # metric units (MAE in log units, AUROC): below this the gap is noise


def gap_closed(local: float, fed: float, pooled: float, *,
               higher_is_better: bool | None = None, min_gap: float = 1e-6) -> float:
    """Share of the local-to-pooled gap closed by ``fed``.

    NaN when the gap is smaller than ``min_gap`` or, if the metric's direction
    is given, when pooled is not better than local-only.
    """
    gap = pooled - local
    if not math.isfinite(gap) or abs(gap) < min_gap:
        return math.nan
    if higher_is_better is not None and (gap > 0) != higher_is_better:
        return math.nan
    return (fed - local) / gap


def site_spec(full: ModelSpec, private: set[str], y: np.ndarray, mask: np.ndarray,
              endpoints: list[str]) -> ModelSpec:
    """``full`` with each private regression endpoint scaled as its site scales it.

    A site trains a private head on its own labels' mean and std
    (``participant.site``); the head is only meaningful under the same scaling. The
    site takes them over its training split; the whole training file is used here,
    which differs from that by the 15% validation rows only.
    """
    specs = []
    for e in full.endpoints:
        j = endpoints.index(e.name)
        values = y[mask[:, j] > 0, j]
        if e.name in private and e.task == "regression" and len(values):
            e = EndpointSpec(name=e.name, task=e.task, target_offset=float(values.mean()),
                             target_scale=float(values.std() or 1.0))
        specs.append(e)
    return replace(full, endpoints=tuple(specs))


def refit_private_heads(model: MultiTaskMLP, train: Split, valid: Split, *,
                        private: set[str], endpoints: list[str],
                        global_weights: dict[str, np.ndarray], epochs: int, seed: int
                        ) -> None:
    """Fit the private heads to the global trunk they are used with (on site, in place).

    The trunk is frozen and only the private endpoints' labels are seen (early stopping
    on the site's validation split); the trunk and the consortium heads are then put back
    exactly as received, so only the private heads differ from the global model.
    """
    cols = [j for j, e in enumerate(endpoints) if e in private]
    only = np.zeros_like(train.mask)
    only[:, cols] = train.mask[:, cols]
    only_v = np.zeros_like(valid.mask)
    only_v[:, cols] = valid.mask[:, cols]
    fit(model, Split(train.x, train.y, only), Split(valid.x, valid.y, only_v), epochs=epochs,
        seed=seed, freeze_trunk=True, lr=1e-2)  # heads only: a linear fit on fixed features
    set_weights(model, global_weights)


def _load(path: Path, endpoints: list[str], spec_key: str, cache: Path
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    table = load_table(path, endpoints={e: e for e in endpoints}, cache_dir=cache)
    x = featurize(list(table.smiles), get_spec(spec_key), cache_dir=cache)
    return x, np.nan_to_num(table.labels), table.mask, list(table.smiles)


def compare_partners(*, partner_dirs: list[Path], endpoints: list[str], tasks: dict[str, str],
                     model: ModelSpec, global_weights: dict[str, np.ndarray],
                     private_heads: dict[int, dict[str, np.ndarray]], featurizer: str,
                     cache: Path, seed: int, epochs: int = 60) -> list[ArmResult]:
    """Run the four arms for every partner; returns one row per arm, partner, endpoint."""
    torch.manual_seed(seed)
    data = [(_load(d / "train.csv", endpoints, featurizer, cache),
             _load(d / "test.csv", endpoints, featurizer, cache)) for d in partner_dirs]
    full = ModelSpec(input_dim=model.input_dim, hidden_dims=model.hidden_dims,
                     dropout=model.dropout, endpoints=tuple(
                         next((e for e in model.endpoints if e.name == n),
                              EndpointSpec(name=n, task=tasks[n]))  # type: ignore[arg-type]
                         for n in endpoints))

    def local_split(x: np.ndarray, y: np.ndarray, m: np.ndarray, smiles: list[str]
                    ) -> tuple[Split, Split]:
        tr, va, _ = scaffold_split(smiles, (0.85, 0.15, 0.0), seed=seed)
        return Split(x[tr], y[tr], m[tr]), Split(x[va], y[va], m[va])

    def scored(k: int, arm: str, pred: np.ndarray, rows: list[ArmResult],
               only: set[str] | None = None) -> None:
        _, (_, yt, mt, _) = data[k]
        per = endpoint_metrics(yt, pred, mt, endpoints, [tasks[e] for e in endpoints])
        for e in endpoints:
            if per[e].get("n", 0) > 0 and (only is None or e in only):
                metric = headline_metric(tasks[e])
                rows.append(ArmResult(partner=k, endpoint=e, metric=metric, arm=arm,
                                      value=per[e].get(metric, math.nan),
                                      n_test=int(per[e]["n"])))

    rows: list[ArmResult] = []
    pooled_x = np.concatenate([d[0][0] for d in data])
    pooled_y = np.concatenate([d[0][1] for d in data])
    pooled_m = np.concatenate([d[0][2] for d in data])
    pooled_s = [s for d in data for s in d[0][3]]
    pooled = build_model(full, seed=seed)
    fit(pooled, *local_split(pooled_x, pooled_y, pooled_m, pooled_s), epochs=epochs, seed=seed)
    for k, ((x, y, m, smiles), (xt, yt, mt, _)) in enumerate(data):
        train, valid = local_split(x, y, m, smiles)
        base = mean_predictor_metrics(train.y, train.mask, yt, mt, endpoints,
                                      [tasks[e] for e in endpoints])
        for e in endpoints:
            if base[e].get("n", 0) > 0:
                metric = headline_metric(tasks[e])
                rows.append(ArmResult(partner=k, endpoint=e, metric=metric,
                                      arm="mean-predictor", value=base[e].get(metric, math.nan),
                                      n_test=int(base[e]["n"])))
        local = build_model(full, seed=seed)
        fit(local, train, valid, epochs=epochs, seed=seed)
        scored(k, "local-only", predict(local, xt), rows)
        held = {e for j, e in enumerate(endpoints)
                if e not in model.endpoint_names and train.mask[:, j].any()}
        if held:
            # Before 2026-12-02 the stored heads were read with target scaling (0, 1),
            # while the site trains them on its own labels' mean and std: scored for
            # the record (results.json), it is not what a site predicts with.
            raw = build_model(full, seed=seed)
            set_weights(raw, global_weights)
            set_weights(raw, private_heads.get(k, {}), strict=False)
            scored(k, "federated-stored-heads-unscaled", predict(raw, xt), rows, only=held)
        fed = build_model(site_spec(full, held, y, m, endpoints), seed=seed)
        set_weights(fed, global_weights)
        set_weights(fed, private_heads.get(k, {}), strict=False)
        if held:
            # The stored private heads were fitted to this site's *local* trunk of the
            # last round, not to the aggregated trunk they are now used with: kept as a
            # reference arm, then refitted on site to the global trunk.
            scored(k, "federated-stored-heads", predict(fed, xt), rows, only=held)
            refit_private_heads(fed, train, valid, private=held, endpoints=endpoints,
                                global_weights=global_weights, epochs=epochs, seed=seed)
        scored(k, "federated", predict(fed, xt), rows)
        tuned = []
        for factor in TRUNK_LR_FACTORS:
            candidate = copy.deepcopy(fed)
            result = fit(candidate, train, valid, epochs=epochs, seed=seed,
                         trunk_lr_factor=factor)
            tuned.append((result.best_valid_loss, factor, candidate))
        # the test set never sees this choice: local validation loss only
        _, _, best = min(tuned, key=lambda t: (t[0], t[1]))
        scored(k, "federated+finetune", predict(best, xt), rows)
        scored(k, "pooled", predict(pooled, xt), rows)
    return rows
