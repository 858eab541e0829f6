"""The ``fedadmet`` command line: one entry point, one module per command group.

``fedadmet coordinator`` (:mod:`fedadmet.cli.coordinator`), ``fedadmet participant``
(:mod:`fedadmet.cli.participant`), ``fedadmet audit`` (:mod:`fedadmet.cli.audit`),
``fedadmet baseline`` and ``fedadmet simulate`` (:mod:`fedadmet.cli.simulate`).
This module only mounts them and turns :class:`FedAdmetError` into a readable
message and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from protocols.errors import FedAdmetError

app = typer.Typer(
    name="fedadmet",
    help="Federated, differentially private ADMET models across companies.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


_mounted = False


def _mount() -> None:
    global _mounted
    if _mounted:
        return
    _mounted = True
    from fedadmet.cli.audit import app as audit_app
    from fedadmet.cli.coordinator import app as coordinator_app
    from fedadmet.cli.participant import app as participant_app
    from fedadmet.cli.simulate import register

    app.add_typer(participant_app, name="participant")
    app.add_typer(coordinator_app, name="coordinator")
    app.add_typer(audit_app, name="audit")
    register(app)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs and tracebacks."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        os.environ["FEDADMET_TRACEBACKS"] = "1"


def main() -> None:
    """Console-script entry point."""
    _mount()
    try:
        app()
    except FedAdmetError as exc:
        if os.environ.get("FEDADMET_TRACEBACKS"):
            raise
        typer.secho(f"error: {exc.diagnostics()}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
