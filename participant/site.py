"""One member site: what it does with a train or evaluate instruction.

This is the participant's core, free of Flower types (the ClientApp is a thin
shell around it). For a train instruction, in order:

1. refuse if a past receipt check halted this site;
2. verify and store delivered receipts (five checks; failure halts);
3. check the featurization and model specs against what this site computes;
4. resend the stored update if this round was already released (crash retry);
5. calibrate (once per run) and preview the privacy cost; refuse over budget;
6. DP-SGD on the shared parameters and this site's private heads;
7. store the new private heads as pending and the update (outbox), commit the
   spend, promote the heads, then return only the delta of the shared
   parameters with aggregate metrics. A crash anywhere leaves heads that only
   committed rounds trained (``PrivateHeadStore.settle`` on the next call).

Nothing per-example leaves: the delta, counts and mean losses only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chem.featurizers import FeaturizationSpec, check_compatible
from chem.metrics import endpoint_metrics, headline_metric
from chem.models import EndpointSpec, ModelSpec, build_model, get_weights, masked_loss, predict
from chem.models import set_weights as load_weights
from participant.config import ParticipantConfig
from participant.data import SiteData, load_site_data
from participant.heads import PrivateHeadStore
from participant.outbox import Outbox, OutboxEntry, as_float32
from participant.receipt_store import ReceiptStore
from protocols.canonical import canonical_json, sha256_hex, tensors_digest
from protocols.errors import (
    ConfigError,
    DataError,
    PrivacyBudgetExceeded,
    ReceiptVerificationError,
    SpecMismatchError,
)
from protocols.messages import PROTOCOL_VERSION, Refusal, RoundInstruction, UpdateSubmission
from protocols.signing import fingerprint, load_private_key, load_public_key, sign

__all__ = ["Site", "TrainResult"]


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``, released with the process if it dies."""
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


if TYPE_CHECKING:
    from participant.calibration import Calibration
    from participant.ledger import PrivacyLedger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """A signed submission with its delta and metrics, or a refusal."""

    submission: UpdateSubmission | None
    delta: dict[str, np.ndarray]
    metrics: dict[str, float]
    refusal: Refusal | None


class Site:
    """A member's state directory and the logic that acts on instructions."""

    def __init__(self, cfg: ParticipantConfig) -> None:
        self.cfg = cfg
        if cfg.receipt_key is None or cfg.coordinator_key is None:
            raise ConfigError("participant.receipt-key / coordinator-key", "both are required",
                              fix="run `fedadmet participant init` and pin the coordinator's "
                              "receipt key given at enrolment")
        self.key = load_private_key(cfg.receipt_key.read_bytes())
        self.coordinator_key = load_public_key(cfg.coordinator_key.read_bytes())
        self.fingerprint = fingerprint(self.key)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(cfg.state_dir)
        self.heads = PrivateHeadStore(cfg.state_dir)
        self.receipts = ReceiptStore(cfg.state_dir)

    # ---------------------------------------------------------------- helpers
    def _refusal(self, ins: RoundInstruction, reason: str, detail: str) -> TrainResult:
        log.warning("refusing round %d: %s (%s)", ins.round, reason, detail)
        return TrainResult(None, {}, {}, Refusal(
            protocol_version=PROTOCOL_VERSION, federation_id=ins.federation_id, round=ins.round,
            participant_fingerprint=self.fingerprint, reason=reason, detail=detail[:500]))

    def _ledger(self, ins: RoundInstruction) -> PrivacyLedger:
        # Opacus (accountants, sampler, noise) is imported on the train path only: it
        # costs ~1.5 s in every fresh flwr-clientapp process, evaluate included.
        from participant.ledger import PrivacyLedger

        return PrivacyLedger.open(self.cfg.state_dir, max_epsilon=self.cfg.max_epsilon,
                                  delta=self.cfg.delta, accountant=ins.dp_plan.accountant)  # type: ignore[arg-type]

    def _specs(self, ins: RoundInstruction) -> tuple[FeaturizationSpec, ModelSpec]:
        fspec = FeaturizationSpec.from_dict(ins.featurization_spec)
        if fspec.digest() != ins.featurization_spec_digest:
            raise SpecMismatchError("featurization spec does not match its announced digest",
                                    got=fspec.digest(), expected=ins.featurization_spec_digest)
        check_compatible(fspec)
        mspec = ModelSpec.from_dict(ins.model_spec)
        if mspec.digest() != ins.model_spec_digest:
            raise SpecMismatchError("model spec does not match its announced digest",
                                    got=mspec.digest(), expected=ins.model_spec_digest)
        return fspec, mspec

    def _verify_receipts(self, ins: RoundInstruction, global_digest: str) -> None:
        if ins.receipts:
            self.receipts.accept(list(ins.receipts), list(ins.inclusion_proofs),
                                 coordinator_key=self.coordinator_key,
                                 own_fingerprint=self.fingerprint,
                                 submitted=self.outbox.submitted(),
                                 received_global_model_digest=global_digest)

    def _local_model(self, mspec: ModelSpec, data: SiteData) -> tuple[Any, list[str], np.ndarray,
                                                                      np.ndarray, np.ndarray,
                                                                      np.ndarray]:
        """Model = global spec + private heads; labels realigned to its endpoint order."""
        tasks = {e.endpoint: e.task for e in self.cfg.data.endpoints}
        private = []
        for j, name in enumerate(data.endpoints):
            if name in mspec.endpoint_names:
                continue
            y = data.y_train[data.mask_train[:, j] > 0, j]
            offset, scale = ((float(y.mean()), float(y.std() or 1.0))
                             if tasks[name] == "regression" and len(y) else (0.0, 1.0))
            private.append(EndpointSpec(name=name, task=tasks[name], target_offset=offset,
                                        target_scale=scale))
        local = mspec.with_endpoints(private)
        model = build_model(local, seed=0)
        cols = {e: j for j, e in enumerate(data.endpoints)}

        def align(y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ya = np.zeros((len(y), len(local.endpoints)), np.float32)
            ma = np.zeros_like(ya)
            for k, e in enumerate(local.endpoint_names):
                if e in cols:
                    ya[:, k], ma[:, k] = y[:, cols[e]], m[:, cols[e]]
            return ya, ma

        ytr, mtr = align(data.y_train, data.mask_train)
        yva, mva = align(data.y_valid, data.mask_valid)
        private_names = [f"heads.{e.name}.{p}" for e in private for p in ("weight", "bias")]
        return model, private_names, ytr, mtr, yva, mva

    def _calibration(self, ins: RoundInstruction, n_train: int, ledger: PrivacyLedger
                     ) -> Calibration:
        from participant.calibration import Calibration, calibrate

        path = self.cfg.state_dir / "calibration.json"
        key = sha256_hex(canonical_json([ins.federation_id, ins.config_digest, n_train]))
        stored = json.loads(path.read_text()) if path.exists() else {}
        if key in stored:
            return Calibration(**stored[key])
        plan = ins.dp_plan
        before = ledger.history()
        cal = calibrate(n_examples=n_train, batch_size=plan.batch_size, rounds=plan.rounds,
                        local_epochs=plan.local_epochs, target_epsilon=plan.target_epsilon,
                        delta=self.cfg.delta, max_epsilon=self.cfg.max_epsilon, history=before,
                        accountant=plan.accountant)  # type: ignore[arg-type]
        stored[key] = cal.__dict__
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.replace(path)
        log.info("calibrated noise_multiplier %.3f at sample_rate %.4f for ε %.2f over %d "
                 "rounds", cal.noise_multiplier, cal.sample_rate, cal.planned_epsilon,
                 plan.rounds)
        return cal

    # ---------------------------------------------------------------- train
    def train(self, ins: RoundInstruction, global_arrays: dict[str, np.ndarray]) -> TrainResult:
        """Handle a train instruction (see the module docstring for the order).

        One train at a time per state directory: Flower can run two ClientApp processes
        for one site at once (a resumed coordinator resends a round the first is still
        training); unserialised, both would release an update and the ledger count one.
        """
        with _exclusive(self.cfg.state_dir / ".train.lock"):
            return self._train(ins, global_arrays)

    def _train(self, ins: RoundInstruction, global_arrays: dict[str, np.ndarray]
               ) -> TrainResult:
        halt = self.receipts.halted()
        if halt is not None:
            return self._refusal(ins, "halted", f"receipt check {halt.check} failed earlier: "
                                 f"{halt.message}")
        global_digest = tensors_digest(global_arrays)
        if global_digest != ins.global_model_digest:
            return self._refusal(ins, "receipt-verification-failed",
                                 "shared parameters do not match the announced digest")
        try:
            self._verify_receipts(ins, global_digest)
        except ReceiptVerificationError as exc:
            return self._refusal(ins, "receipt-verification-failed", exc.diagnostics())
        try:
            fspec, mspec = self._specs(ins)
        except SpecMismatchError as exc:
            return self._refusal(ins, "spec-mismatch", exc.diagnostics())
        ledger = self._ledger(ins)

        def committed(federation_id: str, round: int) -> bool:
            return ledger.find(federation_id, round) is not None

        stored = self.outbox.get(ins.round, base_model_digest=global_digest)
        if stored is not None:
            p = stored.payload
            ledger.commit(federation_id=ins.federation_id, round=ins.round,
                          noise_multiplier=p["noise_multiplier"], sample_rate=p["sample_rate"],
                          steps=p["steps"])
            self.heads.settle(committed)  # heads a crash left pending for this round
            log.info("round %d already released; resending the stored update", ins.round)
            return TrainResult(UpdateSubmission.from_dict(p["submission"]), stored.delta,
                               p["metrics"], None)
        if ledger.find(ins.federation_id, ins.round) is not None:
            return self._refusal(ins, "round-replay", "this round was already released for "
                                 "another global model")
        # Heads a crash left pending: kept if their round's spend was committed, else
        # discarded before this round loads them.
        self.heads.settle(committed)
        try:
            data = load_site_data(self.cfg, fspec)
        except DataError as exc:
            return self._refusal(ins, "data-error", exc.diagnostics())
        from participant.calibration import Calibration
        from participant.privacy_training import train_dp_round

        plan = ins.dp_plan
        try:
            if plan.unsafe_no_dp:
                log.warning("UNSAFE: the federation disabled record-level DP; this update "
                            "carries no privacy guarantee")
                cal = Calibration(noise_multiplier=0.0, sample_rate=min(
                    1.0, plan.batch_size / data.n_train), steps_per_round=max(
                    1, int(data.n_train / plan.batch_size)) * plan.local_epochs,
                    planned_epsilon=math.inf)
            else:
                cal = self._calibration(ins, data.n_train, ledger)
            after = ledger.preview(noise_multiplier=cal.noise_multiplier,
                                   sample_rate=cal.sample_rate, steps=cal.steps_per_round)
            if after > self.cfg.max_epsilon:
                raise PrivacyBudgetExceeded("round would exceed the budget",
                                            got=after, expected=f"<= {self.cfg.max_epsilon}")
        except PrivacyBudgetExceeded as exc:
            return self._refusal(ins, "budget-exhausted", exc.diagnostics())

        model, private_names, ytr, mtr, _, _ = self._local_model(mspec, data)
        load_weights(model, global_arrays)
        load_weights(model, {k: v for k, v in self.heads.load().items() if k in private_names},
                     strict=False)
        # Heads for endpoints this site has no labels for stay frozen: their delta is
        # exactly zero instead of pure noise.
        held = {e for j, e in enumerate(model.spec.endpoint_names) if mtr[:, j].any()}
        trainable = [name for name, _ in model.named_parameters()
                     if not name.startswith("heads.") or name.split(".")[1] in held]
        # Sampling and noise must be unknown to the coordinator: dp_train draws them
        # from fresh OS entropy (participant.dp_random), no seed to search. Retries
        # resend the outbox, so fresh entropy never means a second release.
        y, m = torch.from_numpy(ytr), torch.from_numpy(mtr)
        started = time.perf_counter()
        result = train_dp_round(
            model, (torch.from_numpy(data.x_train), y, m),
            loss_fn=lambda pred, yb, mb: masked_loss(pred, yb, mb, model.spec, reduction="none"),
            max_grad_norm=plan.max_grad_norm, noise_multiplier=cal.noise_multiplier,
            sample_rate=cal.sample_rate, steps=cal.steps_per_round, lr=plan.learning_rate,
            optimizer="adam" if plan.optimizer == "adam" else "sgd",
            trainable=trainable, secure_mode=self.cfg.training.secure_mode)
        # Logged on site only, never sent: the time tracks the Poisson batch sizes, which
        # the accountant assumes hidden. benchmarks/round_overhead.py reads this line.
        log.info("%s round %d: %d DP-SGD steps in %.3f s", ins.federation_id, ins.round,
                 result.steps, time.perf_counter() - started)
        new = get_weights(model)
        delta = as_float32({k: new[k] - global_arrays[k] for k in global_arrays})
        counts = {e: int(m[:, j].sum()) for j, e in enumerate(model.spec.endpoint_names)
                  if e in ins.consortium_endpoints}
        metrics: dict[str, float] = {"train-loss": result.mean_loss, "steps": result.steps,
                                     "num-examples": data.n_train,
                                     **{f"n.{e}": float(c) for e, c in counts.items()}}
        entry_eps = after
        unsigned = UpdateSubmission(
            protocol_version=PROTOCOL_VERSION, federation_id=ins.federation_id, round=ins.round,
            participant_fingerprint=self.fingerprint, base_model_digest=global_digest,
            delta_digest=tensors_digest(delta), num_examples=data.n_train,
            claimed_epsilon=entry_eps if math.isfinite(entry_eps) else 1e308,
            delta=self.cfg.delta, metrics_digest=sha256_hex(canonical_json(metrics)))
        submission = UpdateSubmission.from_dict(
            {**unsigned.to_dict(), "signature": sign(self.key, unsigned.signing_payload())})
        # Order matters for crash safety: pending heads, outbox, ledger, heads, then send.
        # Heads become current only once the ledger counts the round that trained them.
        self.heads.save_pending({k: v for k, v in new.items() if k in private_names},
                                federation_id=ins.federation_id, round=ins.round)
        self.outbox.put(OutboxEntry(round=ins.round, base_model_digest=global_digest,
                                    delta=delta, payload={
                                        "submission": submission.to_dict(), "metrics": metrics,
                                        "noise_multiplier": cal.noise_multiplier,
                                        "sample_rate": cal.sample_rate,
                                        "steps": cal.steps_per_round}))
        ledger.commit(federation_id=ins.federation_id, round=ins.round,
                      noise_multiplier=cal.noise_multiplier, sample_rate=cal.sample_rate,
                      steps=cal.steps_per_round)
        self.heads.settle(committed)
        return TrainResult(submission, delta, metrics, None)

    # ---------------------------------------------------------------- evaluate
    def evaluate(self, ins: RoundInstruction, global_arrays: dict[str, np.ndarray]
                 ) -> tuple[dict[str, float], Refusal | None]:
        """Metrics of the global model (with private heads) on the held-out split."""
        global_digest = tensors_digest(global_arrays)
        try:
            self._verify_receipts(ins, global_digest)
            fspec, mspec = self._specs(ins)
            data = load_site_data(self.cfg, fspec)
        except (ReceiptVerificationError, SpecMismatchError, DataError) as exc:
            refusal = self._refusal(ins, "receipt-verification-failed"
                                    if isinstance(exc, ReceiptVerificationError)
                                    else "spec-mismatch" if isinstance(exc, SpecMismatchError)
                                    else "data-error", exc.diagnostics()).refusal
            return {}, refusal
        model, private_names, _, _, yva, mva = self._local_model(mspec, data)
        load_weights(model, global_arrays)
        load_weights(model, {k: v for k, v in self.heads.load().items() if k in private_names},
                     strict=False)
        pred = predict(model, data.x_valid)
        tasks = [e.task for e in model.spec.endpoints]
        per = endpoint_metrics(yva, pred, mva, list(model.spec.endpoint_names), tasks)
        out: dict[str, float] = {"num-examples": float(len(data.x_valid))}
        # Private endpoints stay private: not even their names or metrics leave the site.
        shared = set(ins.consortium_endpoints)
        for e, task in zip(model.spec.endpoint_names, tasks, strict=True):
            if e not in shared:
                continue
            vals = per[e]
            if vals.get("n", 0) > 0:
                metric = headline_metric(task)
                if math.isfinite(vals.get(metric, math.nan)):
                    out[f"{e}.{metric}"] = vals[metric]
                out[f"{e}.n"] = vals["n"]
        shared_mask = mva * np.array([e in shared for e in model.spec.endpoint_names],
                                     dtype=mva.dtype)
        with torch.no_grad():
            loss = masked_loss(model(torch.from_numpy(data.x_valid)), torch.from_numpy(yva),
                               torch.from_numpy(shared_mask), model.spec)
        out["loss"] = float(loss)
        return out, None

