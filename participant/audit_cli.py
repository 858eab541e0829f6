"""``fedadmet audit``: offline verification and inspection of round receipts.

Receipts are stored one per file, ``receipt-NNNNNN.json``, each holding the
signed receipt's RFC 8785 canonical bytes (``docs/receipts.md``). Verification
needs only those files and the coordinator's public key pinned at enrolment:
no network, no trust in the operator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from protocols.receipts import parse_receipt, verify_chain
from protocols.signing import load_public_key

app = typer.Typer(help="Verify and inspect signed round receipts offline.", no_args_is_help=True)


def _receipt_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("receipt-*.json"))
    if not files:
        raise typer.BadParameter(f"no receipt-*.json files in {directory}")
    return files


@app.command()
def verify(
    receipts_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                        help="Directory of receipt-NNNNNN.json files."),
    coordinator_key: Path = typer.Option(..., "--coordinator-key", exists=True, dir_okay=False,
                                         help="Coordinator's Ed25519 public key (PEM/hex)."),
) -> None:
    """Verify the whole chain; name the first bad receipt and why."""
    key = load_public_key(coordinator_key.read_bytes())
    files = _receipt_files(receipts_dir)
    report = verify_chain([f.read_bytes() for f in files], coordinator_key=key)
    console = Console()
    if report.ok:
        console.print(f"[green]OK[/green]: {report.verified} receipt(s) verified; "
                      f"chain head {report.head_hash}")
        return
    bad = files[report.first_bad_index or 0]
    console.print(f"[red]FAILED[/red] at {bad.name} (receipt #{(report.first_bad_index or 0) + 1}"
                  f"{'' if report.first_bad_round is None else f', round {report.first_bad_round}'}"
                  f"): {report.reason}")
    console.print(f"{report.verified} receipt(s) before it verified.")
    sys.exit(1)


@app.command()
def show(
    receipts_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                        help="Directory of receipt-NNNNNN.json files."),
) -> None:
    """Print a table per round: participants, status, ε, model digests (not verified)."""
    console = Console()
    for f in _receipt_files(receipts_dir):
        receipt = parse_receipt(f.read_bytes())
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
