"""protocols.atomic_files: a killed or failing writer leaves the old file or the new one, whole."""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import atomic_files as af

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0  # a child importing numpy on a loaded 2-core machine

# The child blocks inside the write, after the payload is in the temp file and before
# the rename (in its first fsync), and says so; the parent then SIGKILLs it.
_CHILD = """
import os, sys, time
from pathlib import Path
from protocols import atomic_files as af
real_fsync = os.fsync
def stall(fd):
    sys.stdout.write("inside\\n"); sys.stdout.flush()
    time.sleep(600)
os.fsync = stall
path, how = Path(sys.argv[1]), sys.argv[2]
new = b"new-" * 250_000
if how == "create":
    af.create_new(path, new)
else:
    af.write_bytes(path, new)
"""

# The child rewrites the file with alternating large payloads until it is killed.
_LOOPING_CHILD = """
import sys
from pathlib import Path
from protocols import atomic_files as af
path = Path(sys.argv[1])
payloads = [b"A" * 4_000_000, b"B" * 4_000_000]
sys.stdout.write("started\\n"); sys.stdout.flush()
for i in range(10_000):
    af.write_bytes(path, payloads[i % 2])
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait_for_line(proc: subprocess.Popen[str], expected: str) -> None:
    """The child's one line, within START_TIMEOUT_S (it then blocks or loops)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    assert ready, f"the child said nothing in {START_TIMEOUT_S} s (rc {proc.poll()})"
    line = proc.stdout.readline()
    assert line.strip() == expected, f"child said {line!r} (rc {proc.poll()})"


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_writer_killed_inside_the_write_leaves_the_old_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    af.write_bytes(path, b"old complete content")
    proc = _spawn(_CHILD, str(path), "replace")
    try:
        _wait_for_line(proc, "inside")
        # The new payload is already in the temp file next to it: the kill lands mid-write.
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".ledger.json.")]
        assert len(temps) == 1 and temps[0].stat().st_size == 1_000_000
    finally:
        _kill(proc)
    assert path.read_bytes() == b"old complete content"


def test_a_creator_killed_inside_the_write_leaves_no_target(tmp_path: Path) -> None:
    path = tmp_path / "receipt-000001.json"
    proc = _spawn(_CHILD, str(path), "create")
    try:
        _wait_for_line(proc, "inside")
    finally:
        _kill(proc)
    assert not path.exists()


def test_a_writer_killed_at_any_moment_leaves_one_whole_payload(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    af.write_bytes(path, b"A" * 4_000_000)
    delays = (0.05, 0.2, 0.5)  # bounded: three kills, each well under a second of writing
    for delay in delays:
        proc = _spawn(_LOOPING_CHILD, str(path))
        try:
            _wait_for_line(proc, "started")
            time.sleep(delay)
        finally:
            _kill(proc)
        data = path.read_bytes()
        assert data in (b"A" * 4_000_000, b"B" * 4_000_000), (len(data), data[:1])


def test_a_completed_write_is_the_new_complete_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    af.write_bytes(path, b"old")
    af.write_json(path, {"b": [1, 2.5, None], "a": "ü"}, indent=1, sort_keys=True)
    assert path.read_text(encoding="utf-8") == json.dumps(
        {"b": [1, 2.5, None], "a": "ü"}, indent=1, sort_keys=True)
    assert _visible(tmp_path) == ["x.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    af.write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="serialiser broke"), af.atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("serialiser broke")
    assert path.read_bytes() == b"old"
    assert _visible(tmp_path) == ["out.csv"]


def test_a_failing_rename_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "child").mkdir(parents=True)  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):
        af.write_bytes(target, b"data")
    assert _visible(tmp_path) == ["taken"]


def test_an_object_array_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="pickle"):
        af.write_npz(tmp_path / "w.npz", {"a": np.array([{"x": 1}], dtype=object)})
    assert _visible(tmp_path) == []


def test_create_new_refuses_an_existing_target_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "receipt-000001.json"
    af.create_new(path, b"first")
    with pytest.raises(FileExistsError):
        af.create_new(path, b"second")
    assert path.read_bytes() == b"first"
    assert _visible(tmp_path) == ["receipt-000001.json"]


@pytest.mark.parametrize("mode", [af.PRIVATE, af.PUBLIC, 0o755])
def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o077)
    try:
        written = af.write_bytes(tmp_path / "k", b"x", mode=mode)
        created = af.create_new(tmp_path / "c", b"x", mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == mode
    assert stat.S_IMODE(created.stat().st_mode) == mode


def test_the_default_mode_is_private(tmp_path: Path) -> None:
    assert stat.S_IMODE(af.write_text(tmp_path / "t", "x").stat().st_mode) == 0o600


def test_replace_file_moves_a_complete_file_over_the_target(tmp_path: Path) -> None:
    af.write_bytes(tmp_path / "heads.npz", b"current")
    af.write_bytes(tmp_path / "heads.pending.npz", b"pending")
    af.replace_file(tmp_path / "heads.pending.npz", tmp_path / "heads.npz")
    assert (tmp_path / "heads.npz").read_bytes() == b"pending"
    assert _visible(tmp_path) == ["heads.npz"]


def test_a_staged_directory_replaces_the_old_one_whole(tmp_path: Path) -> None:
    final = tmp_path / "round-000001"
    with af.staged_directory(final) as stage:
        (stage / "a").write_bytes(b"old a")
        (stage / "b").write_bytes(b"old b")
    with af.staged_directory(final) as stage:
        (stage / "a").write_bytes(b"new a")
    assert _visible(final) == ["a"] and (final / "a").read_bytes() == b"new a"
    assert _visible(tmp_path) == ["round-000001"]


def test_a_failing_staged_directory_leaves_the_old_one_and_no_stage(tmp_path: Path) -> None:
    final = tmp_path / "round-000001"
    with af.staged_directory(final) as stage:
        (stage / "a").write_bytes(b"old a")
    with pytest.raises(RuntimeError), af.staged_directory(final) as stage:
        (stage / "a").write_bytes(b"new a")
        raise RuntimeError("crashed while staging")
    assert (final / "a").read_bytes() == b"old a"
    assert _visible(tmp_path) == ["round-000001"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=4096), text=st.text(max_size=200), obj=_JSON,
       arrays=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True),
                              st.lists(st.floats(width=32, allow_nan=False), max_size=16),
                              max_size=3))
def test_every_writer_round_trips(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                  text: str, obj: object,
                                  arrays: dict[str, list[float]]) -> None:
    d = tmp_path_factory.mktemp("rt")
    assert af.write_bytes(d / "b", data).read_bytes() == data
    assert af.write_text(d / "t", text).read_bytes() == text.encode("utf-8")
    assert json.loads(af.write_json(d / "j", obj).read_text(encoding="utf-8")) == obj
    expected = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    with np.load(af.write_npz(d / "n.npz", expected), allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(expected)
        for k, v in expected.items():
            np.testing.assert_array_equal(npz[k], v)
    assert af.create_new(d / "c", data).read_bytes() == data
    assert _visible(d) == ["b", "c", "j", "n.npz", "t"]
