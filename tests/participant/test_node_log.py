"""supernode.log holds plain lines: no ANSI colour codes, no DEBUG, no line per HTTP request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from participant.daemon import SuperNodePlan, start_node
from participant.node_log import plain


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_ansi_colour_codes_never_reach_the_log_file(tmp_path: Path) -> None:
    """Flower colours its level names even when it writes to a file; the daemon strips them."""
    coloured = r"printf '\033[92mINFO \033[0m:      %s\n'"
    node = _script(tmp_path / "node", f"{coloured} 'SuperNode ID: 7'\n"
                   f"( {coloured} 'from a child' ) &\nwait\nexit 0\n")
    exe = _script(tmp_path / "exec", f"{coloured} 'superexec up'\nexec sleep 60\n")
    plan = SuperNodePlan(superlink="127.0.0.1:1", root_certificates=tmp_path / "ca.crt",
                         node_key=tmp_path / "k", port=9101, executable=node,
                         superexec_executable=exe)
    log = tmp_path / "supernode.log"
    log.write_bytes(b"an earlier attempt\n")
    procs = start_node(plan, work_dir=tmp_path / "runtime", log_path=log)
    try:
        assert procs.supernode.wait(timeout=60) == 0
    finally:
        procs.stop(timeout_s=5)
    text = log.read_bytes()
    assert b"\x1b" not in text
    assert text.startswith(b"an earlier attempt\n")  # appended, never truncated
    for line in (b"INFO :      SuperNode ID: 7", b"INFO :      from a child",
                 b"INFO :      superexec up"):
        assert line in text, text


def test_plain_removes_every_escape_sequence_and_nothing_else() -> None:
    assert plain(b"\x1b[1;31mERROR\x1b[0m: 5% \x1b[2K\x1bMdone [ok]\n") == \
        b"ERROR: 5% done [ok]\n"


_TASK = """
from logging import DEBUG, INFO
import logging
from flwr.supercore.logger import log
from participant.node_log import configure_task_logging
configure_task_logging()
log(DEBUG, "[flwr-clientapp] Pull task input")
log(INFO, "flower says hello")
logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1:9094/x "HTTP/1.1 200 OK"')
logging.getLogger("participant.site").info("fedadmet: round 1 trained")
logging.getLogger("participant.site").warning("fedadmet: something is wrong")
"""


def test_clientapp_prints_our_lines_and_flowers_info_without_debug_or_http_lines() -> None:
    done = subprocess.run([sys.executable, "-c", _TASK], capture_output=True, timeout=120,
                          check=True)
    out = (done.stdout + done.stderr).decode()
    assert "fedadmet: round 1 trained" in out and "fedadmet: something is wrong" in out
    assert out.count("flower says hello") == 1
    assert "Pull task input" not in out and "DEBUG" not in out
    assert "HTTP Request" not in out
    assert "\x1b" not in out
