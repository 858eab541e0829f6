"""The member's ``flwr-clientapp``: Flower's own, with the code pin checked first.

The daemon runs the SuperNode with ``--isolation process`` and starts the stock
``flower-superexec`` itself, with a directory first on ``PATH`` whose ``flwr-clientapp``
runs this module (:mod:`participant.daemon` writes it). Flower 1.41's ``run_clientapp``
pulls the task input (message, context, run, FAB), then installs the FAB, then imports
the ClientApp from it. We wrap the first two steps and nothing else:

* after the pull, :func:`participant.pinning.decide` judges the FAB's bytes against the
  pin (the hash the SuperNode claims is recomputed, never trusted);
* the install step raises :class:`BundleRefused` unless those same bytes were accepted, so
  a refused bundle is never unpacked or imported. Flower turns the exception into an
  error reply to the coordinator and a nonzero exit.

``FLWR_HOME`` is a fresh directory per task, so no bundle installed earlier (say while
the member ran unpinned) can be loaded in place of the checked one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from participant.node_log import configure_task_logging
from participant.pinning import BundleRefused, CodePin, PinDecision, decide
from protocols.errors import FedAdmetError

__all__ = ["PIN_ENV", "RUNTIME_INSTALL_FLAG", "installed_digests", "main"]

PIN_ENV = "FEDADMET_CODE_PIN"
RUNTIME_INSTALL_FLAG = "--allow-runtime-dependency-installation"
FEDADMET_PACKAGES = ("chem", "coordinator", "fedadmet", "participant", "protocols", "simulations")
log = logging.getLogger("fedadmet.participant.pinned_clientapp")


def installed_digests(packages: Iterable[str] = FEDADMET_PACKAGES) -> dict[str, str]:
    """SHA-256 of every installed file of ``packages``, keyed by path from their parent."""
    root = Path(__file__).resolve().parent.parent
    out: dict[str, str] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(
                    path.read_bytes()).hexdigest()
    return out


def _load_pin() -> CodePin:
    where = os.environ.get(PIN_ENV)
    if not where:
        raise BundleRefused("no code pin was handed to this ClientApp runner",
                            expected=f"{PIN_ENV} naming the daemon's pin file",
                            fix="start the participant with `fedadmet participant start`")
    return CodePin.from_mapping(json.loads(Path(where).read_text(encoding="utf-8")))


def _guard(run_clientapp_module: Any, pin: CodePin) -> None:
    """Check the pulled FAB before Flower's install step may touch it."""
    pull: Callable[..., tuple[Any, Any, Any, Any]] = run_clientapp_module.pull_task_input
    install: Callable[..., Path] = run_clientapp_module.install_from_fab
    accepted: list[bytes] = []
    refusals: list[str] = []

    def pull_and_check(client: Any) -> tuple[Any, Any, Any, Any]:
        message, context, run, fab = pull(client)
        decision: PinDecision = decide(fab.content, pin=pin, claimed_sha256=fab.hash_str,
                                       installed=installed_digests()
                                       if pin.installed_fedadmet else None)
        where = f"run {run.run_id} ({run.fab_id} {run.fab_version})"
        if decision.accepted:
            log.info("fedadmet: running the coordinator's ClientApp bundle for %s: %s.",
                     where, decision.reason)
            accepted.append(fab.content)
        else:
            log.error("fedadmet: REFUSED the coordinator's ClientApp bundle for %s: %s. "
                      "Nothing of it was installed or run.", where, decision.reason)
            refusals.append(decision.reason)
        return message, context, run, fab

    def install_if_accepted(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Path:
        if not any(fab_file is ok for ok in accepted):
            raise BundleRefused("this member's code pin refused the ClientApp bundle",
                                got=refusals[-1] if refusals else "an unchecked bundle",
                                fix="ask the coordinator for the reviewed bundle, or pin "
                                    "the new one after reviewing it")
        return install(fab_file, *args, **kwargs)

    run_clientapp_module.pull_task_input = pull_and_check
    run_clientapp_module.install_from_fab = install_if_accepted


def main() -> None:
    """Entry point with ``flwr-clientapp``'s arguments."""
    configure_task_logging()
    if RUNTIME_INSTALL_FLAG in sys.argv[1:]:
        log.error("fedadmet: REFUSED to run a ClientApp with runtime dependency installation: "
                  "it would install packages the coordinator's bundle names.")
        sys.exit(2)
    try:
        pin = _load_pin()
    except (FedAdmetError, OSError, ValueError) as exc:
        log.error("fedadmet: REFUSED to run any ClientApp: the code pin cannot be read (%s).",
                  exc)
        sys.exit(2)
    home = tempfile.mkdtemp(prefix="fedadmet-clientapp-")
    os.environ["FLWR_HOME"] = home
    try:
        import flwr.supernode.runtime.run_clientapp as run_clientapp_module
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        configure_task_logging()  # again: Flower's console handler exists now

        _guard(run_clientapp_module, pin)
        flwr_clientapp()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
