"""The coordinator's append-only receipt log.

One file per round, ``receipts/receipt-NNNNNN.json``, holding the signed
receipt's canonical bytes (the format ``docs/receipts.md`` specifies and
``fedadmet audit verify`` reads). A receipt, once written, is never replaced:
files are created with ``os.link`` from a fsynced temp file, which fails if
the name exists. Re-appending identical bytes is a no-op, so a coordinator
that resumes after a crash between checkpoint and log append can simply
append again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
        fd, tmp = tempfile.mkstemp(prefix=".receipt-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(receipt_bytes)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, final)  # fails if another writer won the race
        finally:
            os.unlink(tmp)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

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
