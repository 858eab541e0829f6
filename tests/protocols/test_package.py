"""The protocols package is pure: importing it pulls in no Flower and does no I/O."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import protocols


def test_reexports_resolve_to_the_defining_modules() -> None:
    from protocols import receipts, signing

    assert protocols.verify_chain is receipts.verify_chain
    assert protocols.fingerprint is signing.fingerprint
    assert sorted(protocols.__all__) == sorted(set(protocols.__all__))
    for name in protocols.__all__:
        assert getattr(protocols, name) is not None, name


def test_importing_protocols_does_not_import_flower() -> None:
    code = "import sys, protocols; print(any(m == 'flwr' or m.startswith('flwr.') " \
           "for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
