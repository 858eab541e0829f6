"""The federation's round loop: the coordinator's I/O shell around pure parts.

Each round:

1. wait (bounded) for ``min_participants`` and sample with the checkpointed RNG;
2. send the shared parameters, the specs, the DP plan, and every signed receipt
   the participant has not yet seen with its own inclusion proofs;
3. pull replies one at a time until the round timeout (missing ones are
   recorded as dropped, or late when ``min-replies`` closed the round first);
   each is decoded, admitted (signature first) and, if accepted, added into the
   accumulator and dropped before the next is pulled, so the ServerApp holds one
   reply and one model-sized sum: O(parameters), not O(participants x
   parameters) as with ``send_and_receive``;
5. aggregate (with optional central DP: clip, fixed denominator, noise) and
   apply the server optimizer;
6. build and sign the round receipt;
7. checkpoint (receipt included), then append the receipt to the log;
8. evaluate the new global model on the participants' held-out splits.

If fewer than ``min_participants`` submissions are admitted the round fails
loudly (:class:`RoundFailedError`) and the checkpoint is left untouched.
Flower's ``Strategy.start`` has no resume point, no join deadline and no
place for receipts, so this loop drives the ``Grid`` directly, keeping
Flower's vocabulary (``send_and_receive`` with a timeout).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import Message

from coordinator import checkpoint
from coordinator.admission import (
    AdmissionPolicy,
    Admitted,
    Member,
    Rejected,
    RoundExpectations,
    admit,
    authenticate,
    check_evaluate_metrics,
)
from coordinator.aggregation import StreamingMean, count_weight, member_weights
from coordinator.central_dp import CentralDP
from coordinator.config import FederationConfig
from coordinator.participants import sample_participants, wait_for_participants
from coordinator.receipt_log import ReceiptLog
from coordinator.server_opt import make_server_optimizer
from coordinator.update_bound import plan_update_norm_bound
from protocols import flower_codec as codec
from protocols.atomic_files import write_npz
from protocols.canonical import tensors_digest
from protocols.errors import (
    AdmissionError,
    ConfigError,
    ReplyBoundsError,
    RoundFailedError,
)
from protocols.messages import (
    PROTOCOL_VERSION,
    DPPlan,
    RoundInstruction,
    Signed,
    UpdateSubmission,
)
from protocols.receipts import (
    GENESIS_HASH,
    ReceiptLeaf,
    RoundReceipt,
    build_receipt,
    parse_receipt,
    proof_for,
    receipt_hash,
)
from protocols.signing import Ed25519PrivateKey

__all__ = ["Federation", "RoundSummary"]

log = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]


class GridLike(Protocol):
    """The part of Flower's ``Grid`` the loop uses."""

    def get_node_ids(self) -> Iterable[int]: ...

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]: ...

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]: ...


@dataclass(kw_only=True)
class RoundSummary:
    """What happened in one round (logged to ``rounds.jsonl`` and tracking)."""

    round: int
    accepted: int
    rejected: int
    dropped: int
    refused: int
    reasons: dict[str, str]
    model_digest: str
    receipt_hash: str
    train: dict[str, float]
    evaluate: dict[str, float]
    max_claimed_epsilon: float
    seconds: float
    # wall clock (s since the epoch) when the round began; consecutive starts give the
    # full round time, tracking and checkpointing included
    started_at: float = 0.0
    epsilon: dict[str, float] = field(default_factory=dict)
    # participant-level ε of the central-DP release so far (None: central DP off)
    central_epsilon: float | None = None
    # evaluate replies left out of ``evaluate``, and why (participant id -> reason code)
    evaluate_reasons: dict[str, str] = field(default_factory=dict)
    # sampled members the round closed on (min-replies) before their reply arrived
    late: int = 0


class Federation:
    """Runs (or resumes) one federation over a Flower grid."""

    def __init__(self, cfg: FederationConfig, *, grid: GridLike, signing_key: Ed25519PrivateKey,
                 members: Mapping[str, Member], initial_weights: Weights,
                 model_spec: Mapping[str, Any], model_spec_digest: str,
                 featurization_spec: Mapping[str, Any], featurization_spec_digest: str,
                 on_round: Callable[[RoundSummary, Weights], None] | None = None,
                 on_reply: Callable[[str, int, int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.grid = grid
        self.key = signing_key
        self.members = dict(members)
        self.model_spec = dict(model_spec)
        self.model_spec_digest = model_spec_digest
        self.featurization_spec = dict(featurization_spec)
        self.featurization_spec_digest = featurization_spec_digest
        self.on_round = on_round
        # progress only: (kind, round, replies so far, nodes asked); never sees content
        self.on_reply = on_reply
        self.state_dir = cfg.state_dir
        self.log = ReceiptLog(self.state_dir / "receipts")
        self.opt = make_server_optimizer(
            name=cfg.server_optimizer.name, learning_rate=cfg.server_optimizer.learning_rate,
            beta1=cfg.server_optimizer.beta1, beta2=cfg.server_optimizer.beta2,
            tau=cfg.server_optimizer.tau)
        self.rng = np.random.default_rng(cfg.seed)
        self.central: CentralDP | None = None
        if cfg.central_dp.enabled:
            if cfg.weighting != "uniform":
                raise ConfigError("central-dp.enabled", "central DP needs uniform weighting",
                                  got=cfg.weighting, expected="uniform",
                                  fix='set federation.weighting = "uniform"')
            self.central = CentralDP(noise_multiplier=cfg.central_dp.noise_multiplier,
                                     clipping_norm=cfg.central_dp.clipping_norm,
                                     delta=cfg.privacy.delta)
        # DP noise from OS entropy, never the config seed: replayable noise is removable.
        self.noise_rng = np.random.default_rng()
        self.weights = {k: np.asarray(v, np.float32) for k, v in initial_weights.items()}
        self.start_round = 1
        self.prev_hash = GENESIS_HASH
        self.node_ids: dict[str, str] = {}  # node id -> participant fingerprint
        self.last_submitted: dict[str, int] = {}  # fingerprint -> last round it submitted in
        # a checkpointed round whose evaluation and rounds.jsonl line a crash cut short
        self.pending: RoundSummary | None = None
        self._resume()

    # ---------------------------------------------------------------- resume
    def _resume(self) -> None:
        ckpt = checkpoint.latest(self.state_dir)
        if ckpt is None:
            if self.log.rounds():
                raise RoundFailedError(
                    "receipts exist but no checkpoint does", got=self.log.rounds(),
                    fix="restore the checkpoints directory; never start a new chain over old "
                    "receipts")
            return
        if ckpt.config_digest != self.cfg.digest():
            raise RoundFailedError("the checkpoint was made under another configuration",
                                   got=ckpt.config_digest, expected=self.cfg.digest(),
                                   fix="resume with the original federation config")
        self.log.append(ckpt.round, ckpt.receipt_bytes)  # idempotent; heals a crash
        self.weights = ckpt.weights
        self.opt.load_state_dict(ckpt.optimizer)
        self.rng.bit_generator.state = ckpt.rng_state
        self.node_ids = dict(ckpt.extra.get("node_ids", {}))
        self.last_submitted = {k: int(v) for k, v in ckpt.extra.get("last_submitted", {}).items()}
        if self.central is not None:
            self.central.load_state_dict(ckpt.extra.get("central_dp", {}))
        self.prev_hash = ckpt.receipt_hash
        self.start_round = ckpt.round + 1
        stored = ckpt.extra.get("summary")
        if stored is not None and ckpt.round not in self._logged_rounds():
            self.pending = RoundSummary(**stored)
        log.info("resuming after round %d (receipt %s)%s", ckpt.round, ckpt.receipt_hash[:12],
                 "; its evaluation was interrupted and runs again" if self.pending else "")

    def _logged_rounds(self) -> set[int]:
        path = self.state_dir / "rounds.jsonl"
        if not path.exists():
            return set()
        rounds = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rounds.add(int(json.loads(line)["round"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write; the round is written again
        return rounds

    # ---------------------------------------------------------------- messages
    def _instruction(self, round: int, node: int, global_digest: str,
                     upto: int) -> RoundInstruction:
        fpr = self.node_ids.get(str(node))
        first = self.last_submitted.get(fpr, 0) if fpr else 0
        receipts: list[RoundReceipt] = [parse_receipt(self.log.read(r))
                                        for r in self.log.rounds() if first <= r <= upto and r > 0]
        proofs = [proof_for(r, fpr) if fpr else None for r in receipts]
        p = self.cfg.privacy
        return RoundInstruction(
            protocol_version=PROTOCOL_VERSION, federation_id=self.cfg.federation_id,
            round=round, global_model_digest=global_digest, model_spec=self.model_spec,
            model_spec_digest=self.model_spec_digest,
            featurization_spec=self.featurization_spec,
            featurization_spec_digest=self.featurization_spec_digest,
            config_digest=self.cfg.digest(),
            dp_plan=DPPlan(max_grad_norm=p.max_grad_norm, rounds=self.cfg.rounds,
                           local_epochs=p.local_epochs, target_epsilon=p.target_epsilon,
                           delta=p.delta, batch_size=p.batch_size, accountant=p.accountant,
                           learning_rate=p.learning_rate, optimizer=p.optimizer,
                           unsafe_no_dp=p.unsafe_no_dp),
            consortium_endpoints=tuple(e.name for e in self.cfg.model.endpoints),
            receipts=tuple(r.to_dict() for r in receipts),
            inclusion_proofs=tuple(None if x is None else x.to_dict() for x in proofs),
            weighting=self.cfg.weighting)

    def _exchange(self, kind: str, round: int, nodes: list[int], global_weights: Weights,
                  receipts_upto: int, *, enough: Callable[[], bool] | None = None
                  ) -> Iterator[tuple[int, Message | str]]:
        """Send to ``nodes``; yield ``(node, reply)`` as replies arrive, then ``(node,
        reason)`` for each node that did not answer: ``timeout`` when the round timeout
        passed, ``round-closed`` when ``enough()`` said the round had what it needs.

        Messages are built and pushed one at a time and replies pulled one
        message id at a time (``send_and_receive`` holds all of either at once),
        so the caller can consume and drop each reply before the next is pulled.
        A second reply to one message is yielded too (for the node it was sent to):
        the caller records it as a duplicate.
        """
        digest = tensors_digest(global_weights)
        sent: dict[str, int] = {}
        for node in nodes:
            msg = Message(codec.encode_instruction(
                self._instruction(round, node, digest, receipts_upto), global_weights),
                dst_node_id=node, message_type=kind)
            sent.update((mid, node) for mid in self.grid.push_messages([msg]) if mid)
            del msg
        pending = dict(sent)
        answered: set[int] = set()
        deadline = time.monotonic() + self.cfg.round_timeout
        pause = 0.05
        closed = False
        while pending and not closed:
            progressed = False
            for mid in list(pending):
                for reply in self.grid.pull_messages([mid]):
                    pending.pop(mid, None)
                    node = sent[mid]
                    answered.add(node)
                    progressed = True
                    if self.on_reply is not None:
                        self.on_reply(kind, round, len(answered), len(nodes))
                    yield node, reply
                if enough is not None and enough():
                    closed = True
                    break
            left = deadline - time.monotonic()
            if closed or left <= 0:
                break
            # back off while nothing arrives: one pull per pending id per pause
            pause = 0.05 if progressed else min(2 * pause, 2.0)
            if not progressed:
                time.sleep(min(pause, left))
        for node in nodes:
            if node not in answered:
                yield node, "round-closed" if closed else "timeout"

    def _norm_bounds(self) -> tuple[float, dict[str, float]]:
        """(default bound, per-member bounds): the configured bound, else the plan's."""
        fixed = self.cfg.admission.max_update_norm
        if fixed is not None:
            return fixed, {}
        p = self.cfg.privacy
        d = sum(int(np.prod(v.shape)) for v in self.weights.values())

        def bound(cap: int) -> float:
            return plan_update_norm_bound(
                max_grad_norm=p.max_grad_norm, learning_rate=p.learning_rate,
                batch_size=p.batch_size, local_epochs=p.local_epochs, rounds=self.cfg.rounds,
                target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant,
                optimizer=p.optimizer, unsafe_no_dp=p.unsafe_no_dp, num_params=d,
                max_examples=cap)

        default = self.cfg.admission.max_num_examples
        return bound(default), {fpr: bound(m.max_examples or default)
                                for fpr, m in self.members.items()}

    def _bind(self, node: int, fpr: str, online: set[int]) -> str | None:
        """Bind ``node`` to member ``fpr``; the reason if the binding is refused.

        A node answers for one member, and a member from one node at a time: a key
        that another online node already answers for is refused (its old node may go,
        e.g. simulation node ids change across a resume, and the key moves with it).
        """
        bound = self.node_ids.get(str(node))
        if bound is not None and bound != fpr:
            return "node-bound-to-another-member"
        owners = [int(n) for n, f in self.node_ids.items() if f == fpr and int(n) != node]
        if any(n in online for n in owners):
            return "key-on-two-nodes"
        for n in owners:
            del self.node_ids[str(n)]
        self.node_ids[str(node)] = fpr
        return None

    # ---------------------------------------------------------------- round
    def run_round(self, round: int) -> RoundSummary:
        """One full round; raises RoundFailedError if too few updates are admitted.

        No reply can crash it: every anomaly becomes a leaf with a reason code, keyed
        by the member the node is bound to, else by ``node:<id>``, never by a
        fingerprint the reply merely names.
        """
        t0, started_at = time.perf_counter(), time.time()
        online = wait_for_participants(self.grid.get_node_ids,
                                       min_participants=self.cfg.min_participants,
                                       timeout=self.cfg.join_timeout)
        nodes = sample_participants(online, fraction=self.cfg.fraction,
                                    min_participants=self.cfg.min_participants, rng=self.rng)
        base = self.weights
        base_digest = tensors_digest(base)
        shapes = {k: tuple(v.shape) for k, v in base.items()}
        agg = StreamingMean(shapes)
        endpoints = tuple(e.name for e in self.cfg.model.endpoints)
        expected = RoundExpectations(federation_id=self.cfg.federation_id, round=round,
                                     base_model_digest=base_digest, shapes=shapes,
                                     members=self.members, endpoints=endpoints)
        default_bound, member_bounds = self._norm_bounds()
        p = self.cfg.privacy
        policy = AdmissionPolicy(max_update_norm=default_bound, member_norm_bounds=member_bounds,
                                 weighting=self.cfg.weighting,
                                 max_epsilon=math.inf if p.unsafe_no_dp else p.target_epsilon)
        leaves: dict[str, ReceiptLeaf] = {}
        reasons: dict[str, str] = {}
        accepted: list[tuple[str, UpdateSubmission, float]] = []
        online_set = set(online)

        taken: set[str] = set()  # ids with a leaf or an accepted update this round

        def record(pid: str, status: str, reason: str,
                   sub: UpdateSubmission | None = None) -> None:
            if pid in taken:  # a second anomaly from one node: one leaf per participant
                log.warning("round %d: %s again (%s); its first leaf stands", round, pid[:19],
                            reason)
                return
            leaves[pid] = ReceiptLeaf(
                participant_fingerprint=pid, status=status, reason=reason,
                update_digest=None if sub is None else sub.delta_digest,
                participant_signature=None if sub is None else sub.signature,
                claimed_epsilon=None if sub is None else sub.claimed_epsilon)
            reasons[pid] = reason
            taken.add(pid)

        def enough() -> bool:
            return 0 < self.cfg.min_replies <= len(accepted)

        for node, reply in self._exchange("train", round, nodes, base, round - 1,
                                          enough=enough):
            node_pid = f"node:{node}"
            pid = self.node_ids.get(str(node), node_pid)
            if isinstance(reply, str):  # a site counts late and dropped leaves apart
                record(pid, "late" if reply == "round-closed" else "dropped", reply)
                continue
            if reply.has_error():  # Flower's error text is the site's: log it, record a code
                log.warning("round %d: %s replied with an error: %.200s", round, pid[:19],
                            reply.error.reason)
                record(pid, "dropped", "client-error")
                continue
            try:
                decoded = codec.decode_train_reply(reply.content, shapes=shapes)
            except ReplyBoundsError as exc:  # its stable code only: no peer-chosen names
                log.warning("round %d: reply from %s out of bounds: %s", round, pid[:19], exc)
                record(pid, "rejected", exc.reason)
                continue
            except Exception as exc:  # a peer's bytes never end a round
                log.warning("round %d: malformed reply from %s: %s: %.200s", round, pid[:19],
                            type(exc).__name__, exc)
                record(pid, "rejected", "malformed")
                continue
            message: Signed | None = decoded.refusal or decoded.submission
            assert message is not None
            who = authenticate(message, expected=expected)
            if isinstance(who, Rejected):
                log.warning("round %d: %s from %s: %s (%s)", round, message.KIND, pid[:19],
                            who.reason, who.detail)
                record(pid, "rejected", who.reason)
                continue
            fpr = message.participant_fingerprint  # type: ignore[attr-defined]
            refused = self._bind(node, fpr, online_set)
            if refused is not None:
                log.warning("round %d: %s answered for %s: %s", round, node_pid, fpr[:19],
                            refused)
                record(pid, "rejected", refused)
                continue
            if fpr in taken:  # the same node answering twice
                record(node_pid, "rejected", "duplicate-reply")
                continue
            if decoded.refusal is not None:
                record(fpr, "refused", decoded.refusal.reason)
                continue
            sub = decoded.submission
            assert sub is not None
            decision = admit(sub, decoded.delta, policy=policy, expected=expected,
                             metrics=decoded.metrics)
            if not isinstance(decision, Admitted):
                record(fpr, "rejected", decision.reason, sub)
                log.warning("round %d: rejected %s: %s (%s)", round, fpr[:19], decision.reason,
                            decision.detail)
                continue
            cap = self.members[fpr].max_examples or self.cfg.admission.max_num_examples
            try:
                weight, heads = member_weights(
                    weighting=self.cfg.weighting, count=sub.num_examples, cap=cap,
                    head_counts={e: decoded.metrics.get(f"n.{e}", 0.0) for e in endpoints})
                if self.central is None:
                    agg.add(decoded.delta, weight=weight, group_weights=heads)
                else:  # every tensor over the same members, so one clip bounds all of them
                    agg.add(self.central.clip(decoded.delta), weight=1.0)
            except AdmissionError as exc:  # nothing was added
                record(fpr, "rejected", exc.reason, sub)
                continue
            self.last_submitted[fpr] = round
            accepted.append((fpr, sub, weight))
            taken.add(fpr)
        if len(accepted) < self.cfg.min_participants:
            raise RoundFailedError(
                f"round {round}: only {len(accepted)} update(s) admitted",
                got=reasons or "no replies", expected=f">= {self.cfg.min_participants}",
                fix="see the reasons per participant; the checkpoint is unchanged")
        total = sum(w for _, _, w in accepted)
        # under central DP the sum is divided by the members sampled, not those accepted
        share = total if self.central is None else float(len(nodes))
        for fpr, sub, w in accepted:
            leaves[fpr] = ReceiptLeaf(participant_fingerprint=fpr, status="accepted",
                                      update_digest=sub.delta_digest,
                                      participant_signature=sub.signature, weight=w / share,
                                      claimed_epsilon=sub.claimed_epsilon)
        mean = agg.result()
        if self.central is not None:
            mean = self.central.privatize(mean, num_accepted=len(accepted),
                                          num_sampled=len(nodes), rng=self.noise_rng)
        new = self.opt.apply(base, mean)
        del agg, mean  # the accumulator is the only O(parameters) buffer; release it now
        new_digest = tensors_digest(new)
        receipt = build_receipt(
            federation_id=self.cfg.federation_id, round=round,
            issued_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            previous_receipt_hash=self.prev_hash, model_digest_before=base_digest,
            model_digest_after=new_digest, config_digest=self.cfg.digest(),
            leaves=list(leaves.values()), coordinator_key=self.key)
        rhash = receipt_hash(receipt)
        statuses = [x.status for x in leaves.values()]
        summary = RoundSummary(
            round=round, accepted=len(accepted), rejected=statuses.count("rejected"),
            dropped=statuses.count("dropped"), late=statuses.count("late"),
            refused=statuses.count("refused"),
            reasons=reasons, model_digest=new_digest, receipt_hash=rhash,
            # no training loss: it is a site's un-noised private statistic and stays there
            train={},
            evaluate={},
            max_claimed_epsilon=max((s.claimed_epsilon for _, s, _ in accepted), default=0.0),
            epsilon={fpr: s.claimed_epsilon for fpr, s, _ in accepted},
            central_epsilon=self.central.epsilon() if self.central is not None else None,
            seconds=time.perf_counter() - t0, started_at=started_at)
        # The summary rides in the checkpoint so a crash during evaluation loses nothing.
        checkpoint.save(self.state_dir, checkpoint.Checkpoint(
            round=round, weights=new, optimizer=self.opt.state_dict(),
            rng_state=dict(self.rng.bit_generator.state), receipt_hash=rhash,
            receipt_bytes=receipt.canonical_bytes(), config_digest=self.cfg.digest(),
            extra={"node_ids": self.node_ids, "last_submitted": self.last_submitted,
                   "summary": summary.__dict__,
                   **({"central_dp": self.central.state_dict()} if self.central else {})}))
        self.log.append(round, receipt.canonical_bytes())
        self.weights, self.prev_hash = new, rhash
        return self._finish_round(summary, nodes)

    def _finish_round(self, summary: RoundSummary, nodes: list[int]) -> RoundSummary:
        """Evaluate the checkpointed model, then log the round (rounds.jsonl, on_round)."""
        t0 = time.perf_counter()
        summary.evaluate, summary.evaluate_reasons = self._evaluate(summary.round, nodes)
        summary.seconds += time.perf_counter() - t0
        # allow_nan=False: a non-finite value here is a bug, never a line in rounds.jsonl
        line = json.dumps(summary.__dict__, sort_keys=True, allow_nan=False)
        with open(self.state_dir / "rounds.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.on_round is not None:
            self.on_round(summary, self.weights)
        log.info("round %d: %d accepted, %d rejected, %d dropped, %d refused; eval %s",
                 summary.round, summary.accepted, summary.rejected, summary.dropped,
                 summary.refused, {k: round_(v) for k, v in summary.evaluate.items()})
        return summary

    def _evaluate(self, round: int, nodes: list[int]
                  ) -> tuple[dict[str, float], dict[str, str]]:
        """The learning curve, and why replies were dropped from it.

        Sites send a DP-noised, bounded mean ``<endpoint>.<metric>`` and a noised count
        ``<endpoint>.n`` (participant/private_evaluation.py). The curve is the mean of
        means weighted as the federation weights updates (:func:`count_weight`): under
        ``uniform`` each reply with a positive count weighs 1, under ``capped`` its count
        clipped at the member's enrolled cap, so no reply steers it by claiming a large
        ``n``. Evaluate metrics are
        unsigned and never touch the model: one that is undeclared, non-finite, out of
        range or inconsistent is dropped with its reason (keyed like a leaf: the node's
        bound member, else ``node:<id>``).
        """
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        dropped: dict[str, str] = {}
        seen: set[int] = set()
        endpoints = [e.name for e in self.cfg.model.endpoints]
        replies = 0

        def enough() -> bool:
            return 0 < self.cfg.min_replies <= replies

        for node, reply in self._exchange("evaluate", round, nodes, self.weights, round,
                                          enough=enough):
            pid = self.node_ids.get(str(node), f"node:{node}")
            if isinstance(reply, str):
                continue
            if node in seen:
                dropped.setdefault(pid, "duplicate-reply")
                continue
            seen.add(node)
            if reply.has_error():
                dropped[pid] = "client-error"
                continue
            try:
                metrics, refusal = codec.decode_evaluate_reply(reply.content)
            except ReplyBoundsError as exc:
                dropped[pid] = exc.reason
                continue
            except Exception as exc:  # a peer's bytes never end a round
                log.warning("round %d: malformed evaluate reply from %s: %s", round, pid[:19],
                            type(exc).__name__)
                dropped[pid] = "malformed"
                continue
            if refusal is not None:
                continue
            bad = check_evaluate_metrics(metrics, endpoints=endpoints)
            if bad is not None:
                log.warning("round %d: evaluate reply from %s dropped: %s (%s)", round,
                            pid[:19], bad.reason, bad.detail)
                dropped[pid] = bad.reason
                continue
            replies += 1
            member = self.members.get(pid)
            cap = (member.max_examples if member is not None else None) or \
                self.cfg.admission.max_num_examples
            for key, value in metrics.items():
                if key.endswith(".n"):
                    continue
                n = count_weight(weighting=self.cfg.weighting, cap=cap,
                                 count=metrics.get(f"{key.rsplit('.', 1)[0]}.n", 0.0))
                sums[key] = sums.get(key, 0.0) + value * n
                weights[key] = weights.get(key, 0.0) + n
        return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}, dropped

    def run(self) -> list[RoundSummary]:
        """All remaining rounds (first finishing one whose evaluation a crash cut short)."""
        done: list[RoundSummary] = []
        if self.pending is not None:
            online = wait_for_participants(self.grid.get_node_ids,
                                           min_participants=self.cfg.min_participants,
                                           timeout=self.cfg.join_timeout)
            done.append(self._finish_round(self.pending, sorted(online)))
            self.pending = None
        return done + [self.run_round(r) for r in range(self.start_round, self.cfg.rounds + 1)]


def round_(value: float) -> float:
    """Four significant decimals for logs."""
    return float(f"{value:.4g}")


def write_final(path: Path, weights: Weights) -> None:
    """The final global weights as an npz next to the state, written atomically."""
    write_npz(path, weights)
