"""The coordinator's append-only receipt log.

One file per round, ``receipts/receipt-NNNNNN.json``, holding the signed
receipt's canonical bytes (the format ``docs/receipts.md`` specifies and
``fedadmet audit verify`` reads). A receipt, once written, is never replaced:
files are created with :func:`protocols.atomic_files.create_new`, which
fails if the name exists. Re-appending identical bytes is a no-op, so a coordinator
that resumes after a crash between checkpoint and log append can simply
append again.
"""

from __future__ import annotations

from pathlib import Path

from protocols.atomic_files import create_new
from protocols.errors import IntegrityError
from protocols.receipts import receipt_filename

__all__ = ["ReceiptLog"]


class ReceiptLog:
    """Append-only directory of signed round receipts."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def path_for(self, round: int) -> Path:
        """Where the receipt for ``round`` lives."""
        return self.dir / receipt_filename(round)

    def append(self, round: int, receipt_bytes: bytes) -> Path:
        """Write the receipt for ``round``; identical bytes already there are accepted."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(round)
        if final.exists():
            if final.read_bytes() == receipt_bytes:
                return final
            raise IntegrityError(
                f"a different receipt for round {round} is already in the log",
                got=str(final), expected="receipts are append-only and never replaced",
                fix="investigate the state directory; never edit or delete receipts",
            )
        return create_new(final, receipt_bytes)  # fails if another writer won the race

    def rounds(self) -> list[int]:
        """Rounds with a receipt, ascending."""
        out = []
        for p in self.dir.glob("receipt-*.json"):
            stem = p.stem.removeprefix("receipt-")
            if stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def read(self, round: int) -> bytes:
        """The stored bytes for ``round``."""
        return self.path_for(round).read_bytes()
