"""``fedadmet audit``: offline verification and inspection of round receipts.

``audit privacy`` (the empirical privacy audit) lives in ``participant.privacy_audit``.

Receipts are stored one per file, ``receipt-NNNNNN.json``, each holding the
signed receipt's RFC 8785 canonical bytes (``docs/receipts.md``). Verification
needs only those files and the coordinator's public key pinned at enrolment:
no network, no trust in the operator. Each file must be named for the round it
holds, and a ``receipt-*.json`` name that is no round's is refused. The files
cannot show that the chain's end was cut off: ``--expect-head`` (a member's
last verified head, from ``fedadmet participant budget``) and ``--rounds`` can.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from protocols.errors import MessageValidationError
from protocols.receipts import (
    ChainReport,
    parse_receipt,
    sort_receipt_filenames,
    verify_stored_chain,
)
from protocols.signing import load_public_key

app = typer.Typer(help="Verify and inspect signed round receipts offline.", no_args_is_help=True)

_HEAD = re.compile(r"[0-9a-f]{64}")


def _receipt_files(directory: Path) -> dict[str, bytes]:
    """Every ``receipt-*.json`` entry, stray names included (the verifier refuses those)."""
    files = {p.name: p.read_bytes() if p.is_file() else b""
             for p in directory.glob("receipt-*.json")}
    if not files:
        raise typer.BadParameter(f"no receipt-*.json files in {directory}")
    return files


def _head(value: str | None) -> str | None:
    if value is not None and not _HEAD.fullmatch(value):
        raise typer.BadParameter(f"got {value!r}; expected a receipt hash, 64 lower-case hex "
                                 "characters, as `fedadmet participant budget` prints it")
    return value


def _explain(report: ChainReport) -> str:
    if report.first_bad_name is None:
        return f"[red]FAILED[/red]: {escape(report.reason or '')}"
    where = "" if report.first_bad_index is None else f" (receipt #{report.first_bad_index + 1}"
    if where and report.first_bad_round is not None:
        where += f", round {report.first_bad_round}"
    return f"[red]FAILED[/red] at {escape(report.first_bad_name)}{where + ')' if where else ''}" \
           f": {escape(report.reason or '')}"


@app.command()
def verify(
    receipts_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                        help="Directory of receipt-NNNNNN.json files."),
    coordinator_key: Path = typer.Option(..., "--coordinator-key", exists=True, dir_okay=False,
                                         help="Coordinator's Ed25519 public key (PEM/hex)."),
    expect_head: str | None = typer.Option(
        None, "--expect-head", callback=_head, metavar="HEX",
        help="A receipt hash the chain must contain, such as the head a member last verified "
             "(`fedadmet participant budget` prints it). Detects a truncated or forked chain."),
    rounds: int | None = typer.Option(
        None, "--rounds", min=1, metavar="N",
        help="The number of rounds the chain must hold, exactly. Detects truncation."),
    federation: str | None = typer.Option(
        None, "--federation", help="The federation id every receipt must carry."),
) -> None:
    """Verify the whole chain; name the first bad receipt and why."""
    key = load_public_key(coordinator_key.read_bytes())
    report = verify_stored_chain(_receipt_files(receipts_dir), coordinator_key=key,
                                 federation_id=federation, expect_head=expect_head,
                                 expect_rounds=rounds)
    console = Console()
    if report.ok:
        console.print(f"[green]OK[/green]: {report.verified} receipt(s) verified; "
                      f"chain head {report.head_hash} (round {report.head_round})")
        if report.expected_head_round is not None:
            beyond = report.head_round - report.expected_head_round
            console.print(f"expected head is round {report.expected_head_round}"
                          + (f"; the chain extends it by {beyond} round(s)" if beyond else ""))
        return
    console.print(_explain(report))
    if report.first_bad_index is not None:
        console.print(f"{report.verified} receipt(s) before it verified.")
    elif report.first_bad_name is None:
        console.print(f"all {report.verified} receipt(s) present verified; chain head "
                      f"{report.head_hash} (round {report.head_round}).")
    sys.exit(1)


@app.command()
def show(
    receipts_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                        help="Directory of receipt-NNNNNN.json files."),
) -> None:
    """Print a table per round: participants, status, ε, model digests (not verified)."""
    console = Console()
    files = _receipt_files(receipts_dir)
    names, strays = sort_receipt_filenames(files)
    if strays:
        console.print(f"[red]stray file(s)[/red] {escape(', '.join(strays))}: receipt files "
                      "are named receipt-NNNNNN.json for their round")
        sys.exit(1)
    for name in names:
        try:
            receipt = parse_receipt(files[name])
        except MessageValidationError as exc:
            console.print(f"[red]{escape(name)}[/red]: {escape(exc.message)}; "
                          "run `fedadmet audit verify`")
            sys.exit(1)
        table = Table(title=f"round {receipt.round}  {receipt.issued_at}  "
                      f"model {receipt.model_digest_before[:12]} -> "
                      f"{receipt.model_digest_after[:12]}  config {receipt.config_digest[:12]}")
        for col in ("participant", "status", "reason", "weight", "claimed ε", "update"):
            table.add_column(col)
        for leaf in receipt.leaves:
            table.add_row(
                leaf.participant_fingerprint[:19], leaf.status, leaf.reason or "",
                f"{leaf.weight:.3f}",
                "" if leaf.claimed_epsilon is None else f"{leaf.claimed_epsilon:.3f}",
                (leaf.update_digest or "")[:12])
        console.print(table)
    console.print("[yellow]show does not verify signatures; run `fedadmet audit verify`.[/yellow]")


@app.command("privacy")
def privacy(
    site: Path = typer.Option(Path("participant.toml"), "--site", exists=True, dir_okay=False,
                              help="The site's participant.toml."),
    canaries: int = typer.Option(1, "--canaries", min=1, help="Canary records per audit run."),
    runs: int = typer.Option(40, "--runs", min=4,
                             help="Training runs with, and as many without, the canaries."),
    shadows: int = typer.Option(4, "--shadows", min=2, help="LiRA shadow models per target."),
    epsilon: float = typer.Option(8.0, "--epsilon", help="The plan's ε for the DP model."),
    audit_epsilon: float = typer.Option(
        1.0, "--audit-epsilon", help="A second, smaller claim the canary runs can refute."),
    output: Path | None = typer.Option(None, "--output",
                                       help="Report directory (default: <state>/privacy-audit)."),
    unsafe_disable_noise: bool = typer.Option(
        False, "--unsafe-disable-noise",
        help="UNSAFE demonstration: canary runs without noise; the audit must flag them."),
) -> None:
    """Membership inference on this site's models and a canary audit of DP-SGD (local only)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from participant.config import ParticipantConfig
    from participant.privacy_audit import AuditPlan, run_privacy_audit
    from participant.privacy_audit_report import write_audit

    cfg = ParticipantConfig.load(site)
    plan = AuditPlan(canaries=canaries, runs=runs, shadows=shadows, epsilon=epsilon,
                     audit_epsilon=audit_epsilon)
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("loading site data", total=1)

        def step(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        result = run_privacy_audit(cfg, plan, unsafe_disable_noise=unsafe_disable_noise,
                                   progress=step)
    paths = write_audit(result, output or cfg.state_dir / "privacy-audit")
    console.print(paths["md"].read_text(encoding="utf-8"))
    console.print(f"[green]privacy audit[/green]: {paths['json']}, {paths['md']}, "
                  f"{paths['roc']}")
    if any(c["flagged"] for c in result["canary_audit"]):
        console.print("[red]FLAGGED[/red]: the canary lower bound exceeds the claimed ε")
        sys.exit(1)
