"""``fedadmet coordinator``: commands the consortium operator types.

Parsing, printing and exit codes only; what each command does to a coordinator
directory is :mod:`coordinator.deployment`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer

from coordinator.config import FederationConfig
from coordinator.deployment import (
    FAB_DIR,
    FEDERATION_NAME,
    RECEIPT_PUBLIC_KEY,
    CoordinatorServices,
    Deployment,
    check_resume,
    finished,
    init_deployment,
    register_member,
    resume_advice,
    run_status,
    stream_run,
)

app = typer.Typer(help="Run the consortium coordinator (SuperLink + ServerApp).",
                  no_args_is_help=True)


@app.command()
def init(directory: Path, public_address: str | None = typer.Option(
             None, help="HOST:PORT members dial; nginx binds that host"),
         listen_address: str | None = typer.Option(
             None, help="HOST:PORT nginx binds instead (0.0.0.0:443 for every interface)"),
         port: int = typer.Option(9443, help="loopback SuperLink port"),
         rounds: int = typer.Option(3), round_timeout: float = typer.Option(600.0),
         min_participants: int = typer.Option(2),
         endpoint: list[str] = typer.Option(..., help="consortium endpoint NAME:TASK")) -> None:
    """Create the CA, TLS server certificate, receipt key, coordinator.toml, federation.toml."""
    new = init_deployment(directory, public_address=public_address, port=port, rounds=rounds,
                          round_timeout=round_timeout, min_participants=min_participants,
                          endpoints=endpoint, listen_address=listen_address)
    typer.echo(f"Created {new.deployment_toml} and {new.federation_toml}")
    typer.echo("Give every member these two files (public; `enroll` repeats this):")
    typer.echo(f"  CA certificate:      {new.ca_cert}  (their [coordinator] root-certificate)")
    typer.echo(f"  receipt public key:  {new.receipt_public_key}  (their [participant] "
               f"coordinator-key; fingerprint {new.receipt_fingerprint})")


@app.command()
def enroll(public_key: Path, name: str = typer.Option(...),
           receipt_key: Path = typer.Option(...),
           max_epsilon: float | None = typer.Option(
               None, min=0.0, help="the member's declared privacy budget ε (default: none "
               "beyond the plan's target-epsilon)"),
           max_examples: int | None = typer.Option(
               None, min=1, help="the member's example cap (default: admission.max-num-examples)"),
           directory: Path = typer.Option(Path("."), "--dir")) -> None:
    """Register a member's node key with the SuperLink (loopback) and record it.

    Duplicates (name, node key or receipt key) are refused before the SuperLink is
    touched. ``--max-epsilon`` and ``--max-examples`` are fixed here by the operator:
    admission rejects a claimed ε above the first, weighting and the update-norm bound
    use the second.
    """
    dep = Deployment.load(directory)
    registered = register_member(dep, public_key, name=name, receipt_key=receipt_key,
                                 max_epsilon=max_epsilon, max_examples=max_examples)
    typer.echo(registered)
    typer.echo(f"Enrolled {name}. Send {name}:")
    typer.echo(f"  {dep.ca_cert}  -> [coordinator] root-certificate")
    typer.echo(f"  {dep.directory / RECEIPT_PUBLIC_KEY}  -> [participant] coordinator-key")
    typer.echo(f"  the address {dep.public_address or 'HOST:PORT of your proxy'}  -> "
               "[coordinator] address")


def _echo_line(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def _submit(dep: Deployment, config: Path, *, resume: bool, app_dir: Path) -> int:
    """Run the federation, stream its log, and exit 0 only if the run completed."""
    cfg = FederationConfig.load(config)
    if resume and finished(cfg):
        typer.echo(f"fedadmet: federation {cfg.federation_id} already finished all "
                   f"{cfg.rounds} rounds: nothing to resume.")
        return 0
    done = check_resume(cfg, resume=resume)
    if resume:
        typer.echo(f"Resuming federation {cfg.federation_id} after round {done}.")
    run_id, returncode = stream_run(dep, config, app_dir=app_dir, on_line=_echo_line)
    if run_id is None:
        typer.echo("fedadmet: the SuperLink did not start the run (see above).", err=True)
        return returncode or 1
    status = run_status(dep, run_id)
    if status != "finished:completed":
        typer.echo(f"fedadmet: run {run_id} of federation {cfg.federation_id} ended as "
                   f"{status}; {resume_advice(cfg)}.", err=True)
        return 1
    typer.echo(f"fedadmet: run {run_id} of federation {cfg.federation_id} completed.")
    return 0


@app.command()
def run(directory: Path = typer.Option(Path("."), "--dir"),
        config: Path | None = typer.Option(None, help="federation.toml (default: --dir's)"),
        resume: bool = typer.Option(False, help="continue from the last checkpoint"),
        app_dir: Path = typer.Option(FAB_DIR, help="Flower app to run")) -> None:
    """Submit the federation to the running SuperLink (loopback) and stream its log."""
    dep = Deployment.load(directory)
    raise typer.Exit(_submit(dep, config or dep.directory / FEDERATION_NAME, resume=resume,
                             app_dir=app_dir))


@app.command()
def start(directory: Path = typer.Option(Path("."), "--dir"),
          run_federation: bool = typer.Option(False, "--run",
                                              help="also run federation.toml, then stop"),
          resume: bool = typer.Option(False, help="run, continuing from the last checkpoint"),
          app_dir: Path = typer.Option(FAB_DIR, help="Flower app to run"),
          health_timeout: float = typer.Option(60.0)) -> None:
    """Run the loopback SuperLink (+ fleet-only nginx if public), optionally the federation."""
    dep = Deployment.load(directory)
    # SIGTERM (systemd stop, kill) must leave the with block below: the SuperLink and
    # nginx live in their own sessions and would otherwise outlive this command.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with CoordinatorServices(dep) as services:
        services.start_superlink(health_timeout=health_timeout)
        typer.echo(f"SuperLink listening on 127.0.0.1:{dep.port} (loopback only).", err=True)
        if dep.public_address:
            services.start_proxy()
            typer.echo(f"Members connect to {dep.public_address} (Fleet API only) with CA "
                       f"{dep.ca_cert} and their enrolled node key.", err=True)
        if run_federation or resume:
            raise typer.Exit(_submit(dep, dep.directory / FEDERATION_NAME, resume=resume,
                                     app_dir=app_dir))
        services.wait()

