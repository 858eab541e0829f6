"""``fedadmet audit privacy``: what a site's models reveal, measured on the site's own data.

Two questions a security review asks, answered on the member's premises:

1. **Can someone tell whether our compound was in the training set?** Two
   target models are trained on the site's members (its training split): the
   non-private local-only model (what a site can do alone today) and the
   DP-SGD model of the federation's plan at ε (what one site's releases
   carry), through the production ``train_dp_round``. Members are a random
   half of the site's molecules and non-members the other half
   (:func:`participant.membership_inference.random_membership`), so the
   attacks measure membership, not the gap between chemical series that a
   scaffold split would put between them. A received model (e.g. the
   federated global model) has fixed members, the site's training split: it
   is attacked against the held-out scaffold split, and the report says so.
2. **Does the implementation give the ε it claims?** A canary audit
   (:mod:`participant.canary_audit`) on the same plan.

Everything stays on the site: the result is a local report, never sent.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from chem.featurizers import get_spec
from chem.models import ModelSpec, MultiTaskMLP, build_model, masked_loss
from chem.training import Split, fit
from participant.calibration import calibrate
from participant.canary_audit import DPMechanism, craft_canaries, run_canary_audit
from participant.config import ParticipantConfig
from participant.data import SiteData, load_site_data
from participant.dp.local_round import train_dp_round
from participant.membership_inference import (
    AttackData,
    random_membership,
    run_attacks,
    train_shadows,
)
from participant.roc_statistics import AttackMetrics
from protocols.endpoints import EndpointSpec
from protocols.errors import ConfigError

__all__ = ["AuditPlan", "aligned", "attack_targets", "canary_audits", "run_privacy_audit",
           "site_model_spec"]

# (stage, done, total): drives the CLI's progress bar.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, kw_only=True)
class AuditPlan:
    """The training plan the audit reproduces (defaults: the ``admet-consortium`` scenario)."""

    featurizer: str = "ecfp4-count-2048/v1"
    hidden_dims: tuple[int, ...] = (256,)
    dropout: float = 0.1
    batch_size: int = 128
    local_epochs: int = 2
    rounds: int = 10
    learning_rate: float = 1.0
    max_grad_norm: float = 1.0
    epsilon: float = 8.0
    shadows: int = 4
    local_only_epochs: int = 30
    canaries: int = 1
    runs: int = 40
    # Canary runs train on this many random members at the plan's sample rate,
    # steps and noise: the accountant's ε depends on (σ, q, T) only, so the
    # claim is unchanged and a run costs canary_rows / members of a full one.
    canary_rows: int = 256
    # Rerun the canary audit at audit_epsilon with the noise off: it must be flagged,
    # which shows on this site's data that the audit can fail (its power).
    noise_off_control: bool = True
    # The claim the canary audit tests: R runs cannot show a bound above
    # max_epsilon_lower_bound(R / 2), so a refutable claim must sit below that.
    audit_epsilon: float = 1.0
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shadows < 2 or self.runs < 4 or self.canaries < 1 or self.canary_rows < 16:
            raise ConfigError("audit", "needs shadows >= 2, runs >= 4, canaries >= 1, "
                              "canary_rows >= 16",
                              got=(self.shadows, self.runs, self.canaries, self.canary_rows))
        if not (self.epsilon > 0 and self.audit_epsilon > 0):
            raise ConfigError("epsilon", "must be positive", got=(self.epsilon,
                                                                  self.audit_epsilon))


def site_model_spec(data: SiteData, cfg: ParticipantConfig, plan: AuditPlan) -> ModelSpec:
    """The site's endpoints on the plan's MLP, regression targets scaled on its members."""
    tasks = {e.endpoint: e.task for e in cfg.data.endpoints}
    endpoints = []
    for j, name in enumerate(data.endpoints):
        y = data.y_train[data.mask_train[:, j] > 0, j]
        regression = tasks[name] == "regression" and len(y) > 0
        endpoints.append(EndpointSpec(
            name=name, task=tasks[name],
            target_offset=float(y.mean()) if regression else 0.0,
            target_scale=float(y.std() or 1.0) if regression else 1.0))
    return ModelSpec(input_dim=int(data.x_train.shape[1]), hidden_dims=plan.hidden_dims,
                     dropout=plan.dropout, endpoints=tuple(endpoints))


def _local_only_trainer(spec: ModelSpec, plan: AuditPlan
                        ) -> Callable[[np.ndarray, np.ndarray, np.ndarray], MultiTaskMLP]:
    def train(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> MultiTaskMLP:
        # Every member is trained on for a fixed number of epochs (no rows held back for
        # early stopping, which would not be members): the best epoch by training loss.
        model = build_model(spec, seed=plan.seed)
        fit(model, Split(x, y, m), Split(x, y, m), epochs=plan.local_only_epochs,
            patience=plan.local_only_epochs, seed=plan.seed)
        return model
    return train


def _dp_mechanism(plan: AuditPlan, n: int, epsilon: float, delta: float) -> DPMechanism:
    cal = calibrate(n_examples=n, batch_size=plan.batch_size, rounds=plan.rounds,
                    local_epochs=plan.local_epochs, target_epsilon=epsilon, delta=delta,
                    max_epsilon=math.inf)
    return DPMechanism(noise_multiplier=cal.noise_multiplier, sample_rate=cal.sample_rate,
                       steps=cal.steps_per_round * plan.rounds,
                       max_grad_norm=plan.max_grad_norm, lr=plan.learning_rate, delta=delta)


def _dp_trainer(spec: ModelSpec, plan: AuditPlan, delta: float
                ) -> Callable[[np.ndarray, np.ndarray, np.ndarray], MultiTaskMLP]:
    def train(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> MultiTaskMLP:
        mech = _dp_mechanism(plan, len(x), plan.epsilon, delta)
        model = build_model(spec, seed=plan.seed)
        train_dp_round(model, (torch.from_numpy(np.asarray(x, np.float32)),
                               torch.from_numpy(np.asarray(y, np.float32)),
                               torch.from_numpy(np.asarray(m, np.float32))),
                       loss_fn=lambda p, yb, mb: masked_loss(p, yb, mb, spec, reduction="none"),
                       max_grad_norm=mech.max_grad_norm, noise_multiplier=mech.noise_multiplier,
                       sample_rate=mech.sample_rate, steps=mech.steps, lr=mech.lr)
        return model
    return train


def attack_targets(targets: dict[str, tuple[MultiTaskMLP, Any]], data: AttackData, *,
                   plan: AuditPlan, received_data: AttackData | None = None,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Both attacks on each ``name -> (model, shadow trainer or None)``; JSON-ready.

    A model without a trainer was received: its members are fixed, so it is
    attacked on ``received_data`` (default ``data``), on its own endpoints.
    """
    out: dict[str, Any] = {}
    for name, (model, trainer) in targets.items():
        if trainer is None:  # a received model: its endpoints, in its order
            view = aligned(received_data or data, model.spec.endpoint_names)
            metrics = run_attacks(model, view, shadows=None, n_bootstrap=plan.n_bootstrap,
                                  seed=plan.seed)
            out[name] = _json(metrics)
            continue
        def on_shadow(s: int, n: str = name) -> None:
            if progress is not None:
                progress(f"shadows ({n})", s + 1, plan.shadows)

        shadows = train_shadows(trainer, data, shadows=plan.shadows, seed=plan.seed,
                                on_shadow=on_shadow)
        metrics = run_attacks(model, data, shadows=shadows, n_bootstrap=plan.n_bootstrap,
                              seed=plan.seed)
        out[name] = _json(metrics)
    return out


def _json(metrics: dict[str, AttackMetrics]) -> dict[str, Any]:
    return {attack: {**m.to_dict(), "roc": {"fpr": m.fpr.tolist(), "tpr": m.tpr.tolist()}}
            for attack, m in metrics.items()}


def aligned(data: AttackData, endpoints: tuple[str, ...]) -> AttackData:
    """``data`` with label columns reordered to ``endpoints``; absent ones are masked out."""
    names = data.endpoints

    def cols(y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ya = np.zeros((len(y), len(endpoints)), np.float32)
        ma = np.zeros_like(ya)
        for k, e in enumerate(endpoints):
            if e in names:
                ya[:, k], ma[:, k] = y[:, names.index(e)], m[:, names.index(e)]
        return ya, ma

    ym, mm = cols(data.y_members, data.mask_members)
    yn, mn = cols(data.y_non_members, data.mask_non_members)
    return AttackData(x_members=data.x_members, y_members=ym, mask_members=mm,
                      x_non_members=data.x_non_members, y_non_members=yn,
                      mask_non_members=mn, endpoints=endpoints)


def run_privacy_audit(cfg: ParticipantConfig, plan: AuditPlan = AuditPlan(), *,
                      received: dict[str, MultiTaskMLP] | None = None,
                      unsafe_disable_noise: bool = False,
                      progress: Progress | None = None) -> dict[str, Any]:
    """Membership inference on the site's models and the canary audit; a JSON-ready dict."""
    t0 = time.perf_counter()
    torch.manual_seed(plan.seed)
    data = load_site_data(cfg, get_spec(plan.featurizer))
    if len(data.x_valid) < 4:
        raise ConfigError("data.valid-fraction", "too few held-out non-members to attack",
                          got=len(data.x_valid), fix="raise valid-fraction or add data")
    spec = site_model_spec(data, cfg, plan)
    attack_data = random_membership(
        np.concatenate([data.x_train, data.x_valid]), np.concatenate([data.y_train, data.y_valid]),
        np.concatenate([data.mask_train, data.mask_valid]), seed=plan.seed,
        endpoints=data.endpoints)
    scaffold_data = AttackData(x_members=data.x_train, y_members=data.y_train,
                               mask_members=data.mask_train, x_non_members=data.x_valid,
                               y_non_members=data.y_valid, mask_non_members=data.mask_valid,
                               endpoints=data.endpoints)
    stage = progress or (lambda *_: None)
    local_trainer = _local_only_trainer(spec, plan)
    dp_trainer = _dp_trainer(spec, plan, cfg.delta)
    members = (attack_data.x_members, attack_data.y_members, attack_data.mask_members)
    stage("local-only model", 0, 1)
    targets: dict[str, tuple[MultiTaskMLP, Any]] = {
        "local-only (non-private)": (local_trainer(*members), local_trainer)}
    stage("DP model", 0, 1)
    targets[f"DP-SGD ε={plan.epsilon:g}"] = (dp_trainer(*members), dp_trainer)
    for name, model in (received or {}).items():
        targets[name] = (model, None)
    attacks = attack_targets(targets, attack_data, plan=plan, received_data=scaffold_data,
                             progress=progress)

    canary_results = canary_audits(attack_data, spec, plan, delta=cfg.delta,
                                   unsafe_disable_noise=unsafe_disable_noise, progress=progress)
    control = (canary_audits(attack_data, spec, replace(plan, epsilon=plan.audit_epsilon),
                             delta=cfg.delta, unsafe_disable_noise=True, progress=progress)
               if plan.noise_off_control and not unsafe_disable_noise else [])
    return {"site": cfg.name, "plan": asdict(plan), "delta": cfg.delta,
            "members": len(attack_data.x_members), "non_members": len(attack_data.x_non_members),
            "membership": "random half of the site's molecules (Carlini et al. 2022)",
            "received_membership": {"members": len(data.x_train),
                                    "non_members": len(data.x_valid),
                                    "split": "the site's training split vs its held-out "
                                             "scaffold split"},
            "membership_inference": attacks, "canary_audit": canary_results,
            "canary_audit_noise_off": control,
            "noise_off_control_flagged": all(c["flagged"] for c in control) if control else None,
            "unsafe_noise_disabled": unsafe_disable_noise,
            "seconds": time.perf_counter() - t0}


def canary_audits(data: AttackData, spec: ModelSpec, plan: AuditPlan, *, delta: float,
                  unsafe_disable_noise: bool = False,
                  progress: Progress | None = None) -> list[dict[str, Any]]:
    """The canary audit at the plan's ε and at ``audit_epsilon``; JSON-ready rows.

    The mechanism is the one calibrated for the members (σ, q, T); the runs
    train on ``plan.canary_rows`` random members at that q, which the
    accountant's ε does not depend on. DP is a worst case over datasets, so
    the smaller dataset is as valid a test and, with fewer rows to hide the
    canary among, not a weaker one. Canary structures are non-members.
    """
    stage = progress or (lambda *_: None)
    canary_results = []
    rng = np.random.default_rng(plan.seed)
    initial = build_model(spec, seed=plan.seed)
    n = len(data.x_members)
    rows = np.sort(rng.permutation(n)[: min(plan.canary_rows, n)])
    train = (data.x_members[rows], data.y_members[rows], data.mask_members[rows])
    canaries = craft_canaries(initial, data.x_non_members, data.mask_non_members,
                              k=plan.canaries, x_train=train[0], rng=rng)
    for eps in sorted({plan.audit_epsilon, plan.epsilon}):
        mech = _dp_mechanism(plan, n, eps, delta)
        label = f"canary audit at ε={eps:g}" + (" (UNSAFE: no noise)" if unsafe_disable_noise
                                               else "")

        def on_run(r: int, lab: str = label) -> None:
            stage(lab, r + 1, 2 * plan.runs)

        result = run_canary_audit(
            copy.deepcopy(initial), train, canaries,
            mechanism=mech, runs=plan.runs, unsafe_disable_noise=unsafe_disable_noise,
            on_run=on_run)
        canary_results.append({"target_epsilon": eps, "mechanism": asdict(mech),
                               "training_rows": len(rows),
                               "refutable": result.bound.ceiling > result.claimed_epsilon,
                               **result.to_dict()})
    return canary_results
