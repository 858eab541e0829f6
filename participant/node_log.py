"""The member's ``supernode.log``: what its SuperNode, SuperExec and ClientApps print.

Flower's console handler colours every level name with ANSI escape codes whether or not
it writes to a terminal, so a log file read with ``less`` or ``grep`` is full of
``\\x1b[92m``. The daemon hands its Flower processes one pipe instead of the file and
:class:`LogPump` copies it line by line with the escape sequences removed. The
ClientApp's own logging is set up by :func:`configure_task_logging`: fedadmet's lines
and warnings, never the DEBUG lines Flower creates or a line per HTTP request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import BinaryIO

__all__ = ["ANSI_ESCAPE", "LogPump", "configure_task_logging", "plain"]

# CSI sequences (colours, cursor moves) and the two-byte escapes (ECMA-48).
ANSI_ESCAPE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
_OUR_LOGGERS = ("fedadmet", "participant", "chem", "protocols", "coordinator")
_CHATTY_LOGGERS = ("httpx", "httpcore", "urllib3", "alembic", "sqlalchemy")


def plain(line: bytes) -> bytes:
    """``line`` without ANSI escape sequences."""
    return ANSI_ESCAPE.sub(b"", line)


class LogPump:
    """Copy a pipe into ``log_path`` (appending), each line without ANSI codes.

    ``write_fd`` goes to the children as stdout and stderr; the parent closes its copy
    once they are started (:meth:`started`), so the pump ends when the last child that
    holds the pipe (ClientApps included) exits.
    """

    def __init__(self, log_path: Path) -> None:
        read_fd, self.write_fd = os.pipe()
        self._source: BinaryIO = os.fdopen(read_fd, "rb", buffering=0)
        self._sink = open(log_path, "ab")  # noqa: SIM115 - closed by the pump thread
        self._thread = threading.Thread(target=self._run, name="supernode-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in iter(self._source.readline, b""):
                self._sink.write(plain(line))
                self._sink.flush()
        finally:
            self._sink.close()
            self._source.close()

    def started(self) -> None:
        """The children hold the pipe now: drop the parent's write end."""
        with contextlib.suppress(OSError):
            os.close(self.write_fd)

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait until every line written so far is in the file (bounded)."""
        self.started()
        self._thread.join(timeout=timeout_s)


def configure_task_logging(*, level: int = logging.INFO) -> None:
    """A ClientApp process's logging: our loggers at ``level``, plain text, no HTTP lines.

    ``logging.basicConfig`` on the root would also print every DEBUG record Flower's
    ``flwr`` logger creates (it propagates at DEBUG) and httpx's line per request.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    for name in _OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    flower = logging.getLogger("flwr")
    flower.propagate = False  # its own console handler prints INFO and up once
    for h in flower.handlers:  # Flower's ConsoleHandler: no colour codes in a file
        if hasattr(h, "colored"):
            h.colored = False
