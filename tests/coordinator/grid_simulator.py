"""An in-memory Flower grid with scripted members, to test the real round loop.

As python-tuf tests its updater against a ``RepositorySimulator``, the
coordinator's :class:`~coordinator.federation.Federation` runs here against a
:class:`GridSimulator`: each node id has a script that turns an instruction
(a real ``Message``, encoded by the real codec) into zero or more replies.
Honest scripts answer like a member site: a signed submission (protocol
factories' keys) over a real DP-SGD delta of a small shared model (chem's MLP
trained by the participant's ``train_dp_round``), counts as the weighting
wants, held-out metrics. Other scripts are malformed, error, refusal,
silent (timeout), duplicate or hostile.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from chem.models import ModelSpec, build_model, get_weights, masked_loss
from coordinator.admission import Member
from coordinator.config import FederationConfig
from coordinator.federation import Federation
from protocols import flower_codec as codec
from protocols.canonical import canonical_json, sha256_hex, tensors_digest
from protocols.endpoints import EndpointSpec
from protocols.messages import (
    PROTOCOL_VERSION,
    DPPlan,
    Refusal,
    RoundInstruction,
    UpdateSubmission,
    count_bucket,
)
from protocols.signing import Ed25519PrivateKey, fingerprint
from tests.protocols.factories import COORDINATOR, MEMBERS, key

__all__ = ["DP", "SPEC", "GridSimulator", "Site", "federation", "honest_delta", "initial",
           "task_identity"]

Weights = dict[str, np.ndarray]
Script = Callable[[Message, RoundInstruction, Weights], list[Message]]

SPEC = ModelSpec(input_dim=1024, hidden_dims=(128,), dropout=0.0,
                 endpoints=(EndpointSpec(name="logd", task="regression"),))
# the DP plan the simulated federation runs (SGD, so the derived norm bound is tight)
DP = {"max-grad-norm": 1.0, "learning-rate": 0.05, "batch-size": 32, "local-epochs": 1,
      "target-epsilon": 8.0, "delta": 1e-5, "optimizer": "sgd"}
N_EXAMPLES = 128  # each honest site's examples (its enrolled cap too)
ROUNDS = 3


@contextlib.contextmanager
def task_identity() -> Iterator[None]:
    """Flower's process-wide task identity, which its runtime sets before an app runs
    (``Message()`` reads it); restored afterwards."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def initial() -> Weights:
    """The shared model's initial weights."""
    return get_weights(build_model(SPEC, seed=0))


# The simulated federation's plan as the instruction carries it (DPPlan's fields).
PLAN = DPPlan(max_grad_norm=DP["max-grad-norm"], rounds=ROUNDS, local_epochs=DP["local-epochs"],
              target_epsilon=DP["target-epsilon"], delta=DP["delta"],
              batch_size=DP["batch-size"], learning_rate=DP["learning-rate"], optimizer="sgd")


@lru_cache(maxsize=8)
def _dp_delta(n_examples: int, seed: int, plan: DPPlan) -> tuple[tuple[str, np.ndarray], ...]:
    """One site's real DP-SGD round from :func:`initial` under ``plan`` (the participant's
    own training code)."""
    from coordinator.update_bound import plan_noise
    from participant.dp.local_round import train_dp_round

    steps, sigma = plan_noise(batch_size=plan.batch_size, local_epochs=plan.local_epochs,
                              rounds=plan.rounds, target_epsilon=plan.target_epsilon,
                              delta=plan.delta, accountant="rdp", unsafe_no_dp=False,
                              n_examples=n_examples)
    model = build_model(SPEC, seed=0)
    before = get_weights(model)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n_examples, SPEC.input_dim, generator=g) < 0.1).float()
    y = torch.randn(n_examples, 1, generator=g)
    m = torch.ones_like(y)
    train_dp_round(model, (x, y, m),
                   loss_fn=lambda p, yb, mb: masked_loss(p, yb, mb, model.spec, reduction="none"),
                   max_grad_norm=plan.max_grad_norm, noise_multiplier=sigma,
                   sample_rate=min(1.0, plan.batch_size / n_examples), steps=steps,
                   lr=plan.learning_rate, optimizer="sgd", unsafe_seed=seed)
    after = get_weights(model)
    return tuple((k, (after[k] - before[k]).astype(np.float32)) for k in sorted(before))


def honest_delta(n_examples: int = N_EXAMPLES, seed: int = 0, plan: DPPlan = PLAN) -> Weights:
    """A real DP-SGD delta (cached: the same site-like update for every call)."""
    return {k: v.copy() for k, v in _dp_delta(n_examples, seed, plan)}


@dataclass(kw_only=True)
class Site:
    """A scripted member: honest by default; every field is a way to lie."""

    key: Ed25519PrivateKey
    scale: float = 1.0  # multiplies the delta (2.0: an inflated update)
    claimed_count: int | None = None  # None: what the weighting asks of an honest site
    claimed_epsilon: float = 1.0
    extra_metrics: Mapping[str, float] = field(default_factory=dict)
    eval_metrics: Mapping[str, float] | None = None
    federation_id: str | None = None  # None: the instruction's
    round_shift: int = 0
    seed: int = 0

    def submission(self, ins: RoundInstruction, global_weights: Weights
                   ) -> tuple[UpdateSubmission, Weights, dict[str, float]]:
        """A signed submission with its delta and metrics."""
        delta = {k: (v * np.float32(self.scale)).astype(np.float32)
                 for k, v in honest_delta(seed=self.seed, plan=ins.dp_plan).items()}
        capped = ins.weighting == "capped"
        count = self.claimed_count if self.claimed_count is not None else (
            count_bucket(N_EXAMPLES) if capped else None)
        metrics: dict[str, float] = {"n.logd": float(count or 1)}
        if count is not None:
            metrics["num-examples"] = float(count)
        metrics.update(self.extra_metrics)
        sub = UpdateSubmission(
            protocol_version=PROTOCOL_VERSION,
            federation_id=self.federation_id or ins.federation_id,
            round=ins.round + self.round_shift, participant_fingerprint=fingerprint(self.key),
            base_model_digest=tensors_digest(global_weights), delta_digest=tensors_digest(delta),
            num_examples=count, claimed_epsilon=self.claimed_epsilon, delta=1e-5,
            metrics_digest=sha256_hex(canonical_json(metrics))).signed(self.key)
        return sub, delta, metrics

    def __call__(self, msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
        if msg.metadata.message_type == "evaluate":
            metrics = dict(self.eval_metrics if self.eval_metrics is not None else
                           {"logd.mae": 0.4, "logd.n": 20.0})
            return [Message(codec.encode_evaluate_reply(metrics), reply_to=msg)]
        sub, delta, metrics = self.submission(ins, weights)
        return [Message(codec.encode_train_reply(sub, delta, metrics), reply_to=msg)]


def refusal(key_: Ed25519PrivateKey, *, reason: str = "budget-exhausted",
            names: Ed25519PrivateKey | None = None, signed: bool = True,
            federation_id: str | None = None, round: int | None = None) -> Script:
    """A refusal signed by ``key_`` (or unsigned), naming ``names``'s fingerprint."""
    def script(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
        r = Refusal(protocol_version=PROTOCOL_VERSION,
                    federation_id=federation_id or ins.federation_id,
                    round=round or ins.round, participant_fingerprint=fingerprint(names or key_),
                    reason=reason)
        return [Message(codec.encode_refusal(r.signed(key_) if signed else r), reply_to=msg)]
    return script


def silent(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
    """Never answers: the round waits for it until round-timeout (or min-replies)."""
    return []


def error(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
    """A Flower error reply, carrying a traceback a site should never have sent."""
    return [Message(Error(code=0, reason="Traceback: row 17 CCO crashed the loader"),
                    reply_to=msg)]


def malformed(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
    """A reply whose records are not a fedadmet reply."""
    return [Message(RecordDict({"fedadmet.submission": ConfigRecord({"json": "{"})}),
                    reply_to=msg)]


def twice(script: Script) -> Script:
    """Every reply of ``script`` delivered two times (a retry, or a replay)."""
    def dup(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
        return [r for r in script(msg, ins, weights) for _ in range(2)]
    return dup


class GridSimulator:
    """The part of Flower's ``Grid`` the round loop uses, in memory, scripted per node."""

    def __init__(self, scripts: Mapping[int, Script]) -> None:
        self.scripts = dict(scripts)
        self._replies: dict[str, list[Message]] = {}
        self.pushed: list[tuple[int, str]] = []  # (node, message type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.scripts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid  # the SuperLink assigns this
            node = msg.metadata.dst_node_id
            self.pushed.append((node, msg.metadata.message_type))
            ins, weights = codec.decode_instruction(msg.content)
            self._replies[mid] = list(self.scripts[node](msg, ins, weights))
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out: list[Message] = []
        for mid in message_ids:
            out.extend(self._replies.pop(mid, []))
        return out


def members(*keys: Ed25519PrivateKey, max_examples: int | None = N_EXAMPLES,
            max_epsilon: float = math.inf) -> dict[str, Member]:
    """Enrolled members for ``keys`` (default: the five factory members)."""
    return {fingerprint(k): Member(name=f"m{i}", receipt_key=k.public_key(),
                                   max_epsilon=max_epsilon, max_examples=max_examples)
            for i, k in enumerate(keys or MEMBERS)}


def federation(tmp_path: Path, scripts: Mapping[int, Script], *,
               enrolled: Mapping[str, Member] | None = None,
               plan: Mapping[str, Any] = DP, **settings: Any) -> Federation:
    """A real :class:`Federation` over a :class:`GridSimulator` of ``scripts``.

    ``settings`` are ``[federation]`` keys (``min-participants``, ``round-timeout``,
    ``weighting``, ``min-replies``), or ``admission``/``privacy`` tables; the privacy
    table is laid over ``plan`` (``{}``: the coordinator's default plan).
    """
    fed: dict[str, Any] = {"id": "fed", "rounds": ROUNDS, "min-participants": 2,
                           "round-timeout": 0.3, "join-timeout": 1.0,
                           "state-dir": str(tmp_path / "state")}
    tables = {k: settings.pop(k) for k in ("admission", "privacy") if k in settings}
    fed.update(settings)
    cfg = FederationConfig.from_mapping({
        "federation": fed, "privacy": {**plan, **tables.get("privacy", {})},
        **({"admission": tables["admission"]} if "admission" in tables else {}),
        "model": {"endpoints": [{"name": "logd", "task": "regression"}]}})
    return Federation(cfg, grid=GridSimulator(scripts), signing_key=COORDINATOR,
                      members=enrolled if enrolled is not None else members(),
                      initial_weights=initial(), model_spec=SPEC.to_dict(),
                      model_spec_digest=SPEC.digest(), featurization_spec={"name": "test"},
                      featurization_spec_digest="c" * 64)


OUTSIDER = key(99)  # a key nobody enrolled
