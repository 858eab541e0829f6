"""One member site: what it does with a train or evaluate instruction.

This is the participant's core, free of Flower types (the ClientApp is a thin
shell around it). Both instructions first pass the gate (:meth:`Site._gate`):

1. refuse if this site halted (a failed receipt check, or too many of its
   spent updates marked dropped);
2. verify and store delivered receipts (five checks; failure halts), count
   rounds whose receipt drops our spent update (at the limit: halt);
3. refuse (``receipts-missing``) unless a verified receipt is held for every
   earlier round this site spent ε in: silence is not consent.

A train instruction then, in order:

4. check the featurization and model specs against what this site computes;
5. resend the stored update if this round was already released (crash retry);
6. calibrate (once per run) and preview the privacy cost; refuse over budget;
7. DP-SGD on the shared parameters and this site's private heads;
8. store the new private heads as pending and the update (outbox), commit the
   spend, promote the heads, then return only the delta of the shared
   parameters with aggregate metrics. A crash anywhere leaves heads that only
   committed rounds trained (``PrivateHeadStore.settle`` on the next call).

An evaluate instruction is answered only for the global model that the held
receipt of that round binds, once per round, and only with noised, bounded
metrics charged to the ledger (or nothing, ``[evaluation] release = "local"``).

Nothing per-example leaves, and no free text: refusals carry a reason code
only; the details go to this site's log. docs/threat-model.md lists every
field a site sends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chem.featurizers import FeaturizationSpec, check_compatible
from chem.models import ModelSpec, build_model, get_weights, masked_loss, predict
from chem.models import set_weights as load_weights
from participant.config import ParticipantConfig
from participant.data import SiteData, load_site_data
from participant.heads import PrivateHeadStore
from participant.outbox import Outbox, OutboxEntry, as_float32
from participant.private_evaluation import (
    SAMPLE_RATE,
    STEPS,
    EndpointBound,
    exact_metrics,
    release_metrics,
)
from participant.receipt_store import ReceiptStore
from protocols.atomic_files import write_json
from protocols.canonical import canonical_json, sha256_hex, tensors_digest
from protocols.endpoints import EndpointSpec
from protocols.errors import (
    ConfigError,
    DataError,
    PrivacyBudgetExceeded,
    ReceiptVerificationError,
    SpecMismatchError,
)
from protocols.messages import (
    PROTOCOL_VERSION,
    Refusal,
    RoundInstruction,
    UpdateSubmission,
    count_bucket,
)
from protocols.replies import TrainReply as TrainResult  # the one type; old name kept here
from protocols.signing import fingerprint, load_private_key, load_public_key

__all__ = ["Site", "TrainResult", "epsilon_claim", "reason_for"]


EPSILON_CLAIM_GRID = 1 / 16


def epsilon_claim(spent: float, *, ceiling: float) -> float:
    """The ε a submission claims: ``spent`` rounded up to a public grid, at most ``ceiling``.

    The exact spend is a one-to-one function of the site's size under the public plan, and
    every member reads it in the receipts; admission needs only an upper bound. Rounded up to
    1/16 (and to the budget ceiling when that is lower) it stays an honest upper bound.
    """
    if not math.isfinite(spent):
        return 1e308
    grid = math.ceil(spent / EPSILON_CLAIM_GRID) * EPSILON_CLAIM_GRID
    return max(spent, min(grid, ceiling))


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
        # The detail may describe this site's data: it stays in the site's log; the wire
        # carries the signed reason code only (docs/threat-model.md, Refusals).
        log.warning("refusing round %d: %s (%s)", ins.round, reason, detail)
        return TrainResult(None, {}, {}, Refusal(
            protocol_version=PROTOCOL_VERSION, federation_id=ins.federation_id, round=ins.round,
            participant_fingerprint=self.fingerprint, reason=reason).signed(self.key))

    def refusal_for(self, ins: RoundInstruction, exc: BaseException) -> Refusal:
        """The refusal for an exception that escaped train or evaluate (logged in full)."""
        log.error("round %d failed on site", ins.round, exc_info=exc)
        refusal = self._refusal(ins, reason_for(exc), type(exc).__name__).refusal
        assert refusal is not None
        return refusal

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

    def _gate(self, ins: RoundInstruction, global_arrays: dict[str, np.ndarray],
              ledger: PrivacyLedger, *, binds: int | None) -> TrainResult | None:
        """Halt, receipt intake and receipt completeness (module docstring, 1-3).

        ``binds``: the round whose held receipt must name the received model as
        ``model_digest_after`` (evaluate), or None (train: DP holds for any model).
        """
        halt = self.receipts.halted()
        if halt is not None:
            return self._refusal(ins, "halted", f"halted earlier ({halt.check}, round "
                                 f"{halt.round}): {halt.message}")
        global_digest = tensors_digest(global_arrays)
        if global_digest != ins.global_model_digest:
            return self._refusal(ins, "receipt-verification-failed",
                                 "shared parameters do not match the announced digest")
        spent = ledger.spent_rounds()
        if ins.receipts:
            # dropped and late leaves each have their own limit: a slow member closed out
            # by min-replies is not halted as lost, and a coordinator relabelling drops as
            # late still halts the site (at max-late-rounds)
            limits = {"dropped": self.cfg.max_dropped_rounds, "late": self.cfg.max_late_rounds}
            before = {status: set(self.receipts.dropped_after_submit(self.fingerprint, spent,
                                                                     status=status))
                      for status in limits}
            try:
                self.receipts.accept(list(ins.receipts), list(ins.inclusion_proofs),
                                     coordinator_key=self.coordinator_key,
                                     own_fingerprint=self.fingerprint,
                                     submitted=self.outbox.submitted(),
                                     received_global_model_digest=global_digest,
                                     federation_id=ins.federation_id,
                                     config_digest=ins.config_digest)
            except ReceiptVerificationError as exc:
                return self._refusal(ins, "receipt-verification-failed", exc.diagnostics())
            self.outbox.prune(verified=set(self.receipts.rounds()))
            for status, limit in limits.items():
                dropped = self.receipts.dropped_after_submit(self.fingerprint, spent,
                                                             status=status)
                for r in sorted(set(dropped) - before[status]):
                    log.error("ROUND %d: the coordinator's signed receipt marks this site's "
                              "update %s, but this site spent privacy budget on it (%d such "
                              "round(s); halting at %d)", r, status.upper(), len(dropped), limit)
                # Only a newly marked round halts: an operator who cleared the halt after
                # investigating is not halted again by the same receipts.
                if set(dropped) - before[status] and len(dropped) >= limit:
                    self.receipts.halt(f"{status}-limit", max(dropped),
                                       f"rounds {dropped}: updates this site spent ε on are "
                                       f"marked {status} in the coordinator's receipts")
                    return self._refusal(ins, "halted", f"{len(dropped)} spent updates {status}")
        missing = self.receipts.missing(ins.federation_id, spent, before=ins.round)
        if missing:
            return self._refusal(ins, "receipts-missing", f"no verified receipt for round(s) "
                                 f"{missing}, in which this site spent ε")
        if binds is not None:
            receipt = self.receipts.get(binds)
            if receipt is None or receipt.federation_id != ins.federation_id:
                return self._refusal(ins, "receipts-missing", f"no verified receipt for round "
                                     f"{binds} binds the model to evaluate")
            if receipt.model_digest_after != global_digest:
                message = (f"the model sent for round {binds} is not the one its receipt "
                           f"attests ({global_digest} vs {receipt.model_digest_after})")
                self.receipts.halt("model-digest", binds, message)
                return self._refusal(ins, "receipt-verification-failed", message)
        return None

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
        ev = self.cfg.evaluation
        if ev.release == "noised":
            # Leave room for this run's evaluation releases: each round's is charged too.
            done = sum(1 for e in ledger.entries()
                       if e.federation_id == ins.federation_id and e.release == "evaluate")
            before.append((ev.noise_multiplier, SAMPLE_RATE, STEPS * max(0, plan.rounds - done)))
        cal = calibrate(n_examples=n_train, batch_size=plan.batch_size, rounds=plan.rounds,
                        local_epochs=plan.local_epochs, target_epsilon=plan.target_epsilon,
                        delta=self.cfg.delta, max_epsilon=self.cfg.max_epsilon, history=before,
                        accountant=plan.accountant)  # type: ignore[arg-type]
        stored[key] = cal.__dict__
        write_json(path, stored)
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
        ledger = self._ledger(ins)
        refused = self._gate(ins, global_arrays, ledger, binds=None)
        if refused is not None:
            return refused
        global_digest = ins.global_model_digest
        try:
            fspec, mspec = self._specs(ins)
        except SpecMismatchError as exc:
            return self._refusal(ins, "spec-mismatch", exc.diagnostics())

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
        from participant.dp.local_round import train_dp_round

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
        # The mean loss is over private labels with unbounded sensitivity: logged here only.
        log.info("%s round %d: mean DP-SGD training loss %.4f", ins.federation_id, ins.round,
                 result.mean_loss)
        # Counts leave only as the federation's weighting needs them (docs/threat-model.md):
        # uniform sends whether this site holds an endpoint's labels, capped a power-of-two
        # bucket. The step count is kept local: it is the dataset size over the batch size.
        capped = ins.weighting == "capped"
        num_examples = count_bucket(data.n_train) if capped else None
        metrics: dict[str, float] = {
            **({"num-examples": float(num_examples)} if num_examples is not None else {}),
            **{f"n.{e}": float(count_bucket(c) if capped else 1) if c else 0.0
               for e, c in counts.items()}}
        entry_eps = after
        unsigned = UpdateSubmission(
            protocol_version=PROTOCOL_VERSION, federation_id=ins.federation_id, round=ins.round,
            participant_fingerprint=self.fingerprint, base_model_digest=global_digest,
            delta_digest=tensors_digest(delta), num_examples=num_examples,
            claimed_epsilon=epsilon_claim(entry_eps, ceiling=min(
                ins.dp_plan.target_epsilon, self.cfg.max_epsilon)),
            delta=self.cfg.delta, metrics_digest=sha256_hex(canonical_json(metrics)))
        submission = unsigned.signed(self.key)
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
        """Held-out metrics of the receipt-bound global model (module docstring).

        Serialised with training: both read and charge the ledger.
        """
        with _exclusive(self.cfg.state_dir / ".train.lock"):
            result = self._evaluate(ins, global_arrays)
        return result.metrics, result.refusal

    def _evaluate(self, ins: RoundInstruction, global_arrays: dict[str, np.ndarray]
                  ) -> TrainResult:
        ledger = self._ledger(ins)
        refused = self._gate(ins, global_arrays, ledger, binds=ins.round)
        if refused is not None:
            return refused
        ev = self.cfg.evaluation
        if ledger.find(ins.federation_id, ins.round, release="evaluate") is not None:
            return self._refusal(ins, "round-replay", "this round's evaluation was already "
                                 "released")
        try:
            fspec, mspec = self._specs(ins)
        except SpecMismatchError as exc:
            return self._refusal(ins, "spec-mismatch", exc.diagnostics())
        try:
            data = load_site_data(self.cfg, fspec)
        except DataError as exc:
            return self._refusal(ins, "data-error", exc.diagnostics())
        model, private_names, _, _, yva, mva = self._local_model(mspec, data)
        load_weights(model, global_arrays)
        load_weights(model, {k: v for k, v in self.heads.load().items() if k in private_names},
                     strict=False)
        # Private endpoints stay private: not even their names or metrics leave the site.
        shared = [j for j, e in enumerate(model.spec.endpoint_names)
                  if e in ins.consortium_endpoints]
        bounds = [EndpointBound(name=model.spec.endpoints[j].name,
                                task=model.spec.endpoints[j].task,
                                target_scale=model.spec.endpoints[j].target_scale)
                  for j in shared]
        pred = predict(model, data.x_valid)[:, shared]
        y, m = yva[:, shared], mva[:, shared]
        log.info("%s round %d: held-out metrics (exact, kept on site) %s", ins.federation_id,
                 ins.round, exact_metrics(y, pred, m, bounds, error_bound=ev.error_bound))
        if ev.release == "local":
            return TrainResult(None, {}, {}, None)
        try:
            after = ledger.preview(noise_multiplier=ev.noise_multiplier,
                                   sample_rate=SAMPLE_RATE, steps=STEPS)
            if after > self.cfg.max_epsilon:
                raise PrivacyBudgetExceeded("evaluation would exceed the budget", got=after,
                                            expected=f"<= {self.cfg.max_epsilon}")
            released = release_metrics(y, pred, m, bounds, noise_multiplier=ev.noise_multiplier,
                                       error_bound=ev.error_bound)
            # Charged before the metrics leave the process, like a training round.
            ledger.commit(federation_id=ins.federation_id, round=ins.round,
                          noise_multiplier=ev.noise_multiplier, sample_rate=SAMPLE_RATE,
                          steps=STEPS, release="evaluate")
        except PrivacyBudgetExceeded as exc:
            return self._refusal(ins, "budget-exhausted", exc.diagnostics())
        return TrainResult(None, {}, released, None)


# Stable reason codes for exceptions that escape a round (the only thing that leaves).
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (DataError, "data-error"), (PrivacyBudgetExceeded, "budget-exhausted"),
    (SpecMismatchError, "spec-mismatch"), (ReceiptVerificationError, "receipt-verification-failed"),
    (ConfigError, "config-error"),
)


def reason_for(exc: BaseException) -> str:
    """The reason code a refusal carries for ``exc``; ``internal-error`` if none fits."""
    return next((code for cls, code in _REASONS if isinstance(exc, cls)), "internal-error")
