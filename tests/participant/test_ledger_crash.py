"""kill -9 at any point never loses spend and never counts it twice (real killed processes)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from participant.ledger import PrivacyLedger, epsilon_for

CHILD = """
import sys
from pathlib import Path
from participant.ledger import PrivacyLedger
state = Path(sys.argv[1])
ledger = PrivacyLedger.open(state, max_epsilon=1e9, delta=1e-5)
last = max((e.round for e in ledger.entries()), default=0)
if last:  # a restarted daemon retries its last round first: must not count twice
    ledger.commit(federation_id="f", round=last, noise_multiplier=1.2, sample_rate=0.05, steps=20)
print("ready", flush=True)
for r in range(last + 1, last + 400):
    ledger.commit(federation_id="f", round=r, noise_multiplier=1.2, sample_rate=0.05, steps=20)
"""


def _check(state: Path) -> int:
    path = state / "privacy_ledger.json"
    if not path.exists():
        return 0
    data = json.loads(path.read_text())  # always parseable: never a torn write
    rounds = [e["round"] for e in data["entries"]]
    assert rounds == list(range(1, len(rounds) + 1)), "lost or duplicated rounds"
    ledger = PrivacyLedger.open(state, max_epsilon=1e9, delta=1e-5)  # re-derives ε
    assert ledger.epsilon() == epsilon_for([(1.2, 0.05, 20)] * len(rounds), delta=1e-5) or \
        abs(ledger.epsilon() - epsilon_for([(1.2, 0.05, 20)] * len(rounds), delta=1e-5)) < 1e-9
    return len(rounds)


@pytest.mark.slow
def test_sigkill_at_random_points_keeps_the_ledger_exact(tmp_path: Path) -> None:
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    committed = 0
    deadline = time.monotonic() + 240
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # bounded: the child prints "ready" or dies
            assert line.strip() == b"ready", proc.stderr.read() if proc.stderr else b""
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        now = _check(tmp_path)
        assert now >= committed  # nothing committed is ever lost
        committed = now
        assert time.monotonic() < deadline
    assert committed > 0
