"""A site killed at any step boundary of ``Site._train`` keeps ledger, outbox and heads agreeing.

Issue 13 §4: heads were saved before the ledger commit, so a kill between the
two left heads from a round the ledger did not count; the next round trained
from them and the ledger undercounted. Here the real site is interrupted at
each boundary (in process by an exception nothing catches, and by SIGKILL in a
child process), then the coordinator either retries the round or moves on.

Receipts are mandatory: a site trains round r only holding a verified receipt
for every earlier round it spent ε in. So every instruction here carries the
coordinator's signed receipts of the rounds it has closed (:class:`Coordinator`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import participant.dp.local_round as pt
from participant.heads import PrivateHeadStore
from participant.ledger import PrivacyLedger
from participant.outbox import Outbox
from participant.site import Site
from protocols.canonical import tensors_digest
from protocols.messages import RoundInstruction, UpdateSubmission
from protocols.receipts import RoundReceipt
from tests.participant.site_factory import SiteKit, make_site

# Where a crash can fall, in the order Site._train reaches them after training.
BOUNDARIES = ("after-training", "after-pending-heads", "after-outbox", "after-ledger-commit",
              "after-heads-promote")


ROUNDS = 5


@dataclass
class Coordinator:
    """The site, and what the coordinator knows of it: the updates it received, and one
    signed receipt per closed round (a chain, as ``Federation`` issues them)."""

    kit: SiteKit
    received: dict[int, UpdateSubmission] = field(default_factory=dict)
    receipts: list[RoundReceipt] = field(default_factory=list)

    def instruction(self, round: int) -> RoundInstruction:
        """Round ``round``'s instruction, delivering the receipts of every earlier round.

        Sending round ``round`` closes the rounds before it: the site's leaf is accepted
        with the update received, or ``dropped`` if none came (the site crashed before
        replying). A retried round is not closed yet, so its retry carries the same
        receipts as the first attempt."""
        digest = tensors_digest(self.kit.global_weights)  # the global model never changes
        while len(self.receipts) < round - 1:
            r = len(self.receipts) + 1
            got = self.received.get(r)
            self.receipts.append(self.kit.receipt(
                r, submission=got, status="accepted" if got is not None else "dropped",
                previous=self.receipts[-1] if self.receipts else None,
                model_before=digest, model_after=digest))
        return self.kit.instruction(round=round, rounds=ROUNDS, receipts=self.receipts)


class Killed(BaseException):
    """Stands in for the process dying: no ``except Exception`` handler sees it."""


def _arm(boundary: str, monkeypatch: pytest.MonkeyPatch, crash: Callable[[], None]) -> None:
    """Make ``crash()`` happen at ``boundary`` of the next train (after its DP training)."""
    state = {"trained": False}
    real = pt.train_dp_round

    def train(*a: Any, **kw: Any) -> Any:
        out = real(*a, **kw)
        state["trained"] = True
        if boundary == "after-training":
            crash()
        return out

    monkeypatch.setattr(pt, "train_dp_round", train)  # Site._train imports it per call

    def after(cls: type, name: str, at: str) -> None:
        original = getattr(cls, name)

        def wrapped(self: Any, *a: Any, **kw: Any) -> Any:
            out = original(self, *a, **kw)
            if state["trained"] and boundary == at:
                crash()
            return out
        monkeypatch.setattr(cls, name, wrapped)

    after(Outbox, "put", "after-outbox")
    after(PrivateHeadStore, "save_pending", "after-pending-heads")
    after(PrivacyLedger, "commit", "after-ledger-commit")
    after(PrivateHeadStore, "settle", "after-heads-promote")


def _raise() -> None:
    raise Killed


def _train(coordinator: Coordinator, round: int) -> Any:
    kit = coordinator.kit
    result = Site(kit.config).train(coordinator.instruction(round), kit.global_weights)
    assert result.refusal is None, result.refusal
    assert result.submission is not None
    coordinator.received[round] = result.submission  # the reply reached the coordinator
    return result


def _agree(kit: SiteKit, *, sent: set[int]) -> set[int]:
    """Ledger, outbox and heads agree; returns the ledger's rounds."""
    cfg = kit.config
    ledger = PrivacyLedger.open(cfg.state_dir, max_epsilon=cfg.max_epsilon, delta=cfg.delta)
    counted = {e.round for e in ledger.entries()}
    assert sent <= counted, "an update left the site without its spend in the ledger"
    assert counted <= set(Outbox(cfg.state_dir).submitted()), "spend without a stored update"
    heads = PrivateHeadStore(cfg.state_dir)
    assert {r for _, r in heads.lineage()} <= counted, \
        "current heads were trained by a round the ledger does not count"
    return counted


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = Coordinator(make_site(tmp_path, n=120))
    _train(coordinator, 1)
    yield coordinator


def _crash_round(coordinator: Coordinator, round: int, boundary: str, how: str,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "raise":
        with monkeypatch.context() as m:
            _arm(boundary, m, _raise)
            with pytest.raises(Killed):
                _train(coordinator, round)
        return
    kit = coordinator.kit
    np.savez(kit.root / "global.npz", **kit.global_weights)
    (kit.root / "instruction.json").write_text(json.dumps(
        coordinator.instruction(round).to_dict()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(kit.root), boundary], env=env,
                          capture_output=True, timeout=300)
    assert done.returncode == -9, done.stderr.decode()[-2000:]


CHILD = """
import json, os, signal, sys
from pathlib import Path
import numpy as np
import pytest
from participant.config import ParticipantConfig
from participant.site import Site
from protocols.messages import RoundInstruction
from tests.participant.test_site_crash_order import _arm
root, boundary = Path(sys.argv[1]), sys.argv[2]
with np.load(root / "global.npz", allow_pickle=False) as z:
    weights = {k: z[k] for k in z.files}
ins = RoundInstruction.from_dict(json.loads((root / "instruction.json").read_text()))
mp = pytest.MonkeyPatch()
_arm(boundary, mp, lambda: os.kill(os.getpid(), signal.SIGKILL))
Site(ParticipantConfig.load(root / "participant.toml")).train(ins, weights)
sys.exit(3)  # not killed: the boundary was never reached
"""


def _crash_then(coordinator: Coordinator, *, round: int, boundary: str, how: str, then: str,
                monkeypatch: pytest.MonkeyPatch, sent: set[int]) -> set[int]:
    """Crash ``round`` at ``boundary``, then retry it or move on; returns the rounds sent.

    Moving on, the next instruction carries ``round``'s receipt marking this site's leaf
    dropped (no reply came); the site counts it, one below its halt limit."""
    kit = coordinator.kit
    before = _agree(kit, sent=sent)
    _crash_round(coordinator, round, boundary, how, monkeypatch)
    committed_by_crash = boundary in ("after-ledger-commit", "after-heads-promote")
    assert _agree(kit, sent=sent) == before | ({round} if committed_by_crash else set())
    if then == "retry":
        _train(coordinator, round)  # resends the stored update (or trains afresh), counts it once
        sent = sent | {round}
    else:
        _train(coordinator, round + 1)
        sent = sent | {round + 1}
    counted = _agree(kit, sent=sent)
    assert counted == sent | ({round} if committed_by_crash else set()) | before
    # Settled: the heads were trained by exactly the rounds whose spend is counted.
    assert [r for _, r in PrivateHeadStore(kit.config.state_dir).lineage()] == sorted(counted)
    return sent


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_crash_between_heads_and_ledger_never_trains_from_uncounted_heads(
        coordinator: Coordinator, boundary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _crash_then(coordinator, round=2, boundary=boundary, how="raise", then="move-on",
                       monkeypatch=monkeypatch, sent={1})
    _crash_then(coordinator, round=4, boundary=boundary, how="raise", then="retry",
                monkeypatch=monkeypatch, sent=sent)


@pytest.mark.slow
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_sigkill_at_each_train_boundary_keeps_ledger_outbox_and_heads_agreeing(
        coordinator: Coordinator, boundary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_then(coordinator, round=2, boundary=boundary, how="kill", then="move-on",
                monkeypatch=monkeypatch, sent={1})


def test_the_old_order_is_caught_by_these_checks(coordinator: Coordinator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads made current before the commit (the old order), then a crash: ``_agree`` fails."""
    def old_save(self: PrivateHeadStore, params: dict[str, np.ndarray], *, federation_id: str,
                 round: int) -> None:
        lineage = [f"{f}:{r}" for f, r in self.lineage()] + [f"{federation_id}:{round}"]
        self._write(self.path, {**params, "__lineage__": np.array(lineage, dtype=np.str_)})

    monkeypatch.setattr(PrivateHeadStore, "save_pending", old_save)
    with monkeypatch.context() as m:
        _arm("after-outbox", m, _raise)
        with pytest.raises(Killed):
            _train(coordinator, 2)  # with round 1's receipt: the crash, not the gate, stops it
    with pytest.raises(AssertionError, match="ledger does not count"):
        _agree(coordinator.kit, sent={1})
