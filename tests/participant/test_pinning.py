from __future__ import annotations

import contextlib
import hashlib
import io
import stat
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from participant.pinned_clientapp import installed_digests
from participant.pinning import (
    MAX_ENTRIES,
    MAX_ENTRY_BYTES,
    MAX_FAB_BYTES,
    MAX_TOTAL_BYTES,
    BundleRefused,
    CodePin,
    bundle_files,
    code_digest,
    decide,
)
from protocols.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = (b'[project]\nname = "fedadmet-app"\nversion = "1.0.0"\n\n'
             b'[tool.flwr.app]\npublisher = "fedadmet"\n\n'
             b'[tool.flwr.app.components]\nserverapp = "coordinator.server_app:app"\n'
             b'clientapp = "participant.client_app:app"\n')
APP = {"pyproject.toml": b'[tool.flwr.app.components]\nclientapp = "app.client:app"\n',
       "app/__init__.py": b"",
       "app/client.py": b"from flwr.clientapp import ClientApp\napp = ClientApp()\n"}


def fab_bytes(files: Mapping[str, bytes], *, order: list[str] | None = None,
              date: tuple[int, int, int, int, int, int] = (2024, 10, 1, 0, 0, 0),
              extra: list[zipfile.ZipInfo] | None = None) -> bytes:
    """A FAB as `flwr build` packs one: the files, then `.info/CONTENT` (path,sha256,bits)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in order or list(files):
            z.writestr(zipfile.ZipInfo(name, date), files[name])
        for info in extra or []:
            z.writestr(info, b"x")
        content = "".join(f"{n},{hashlib.sha256(files[n]).hexdigest()},{len(files[n]) * 8}\n"
                          for n in files)
        z.writestr(zipfile.ZipInfo(".info/CONTENT", date), content)
    return buf.getvalue()


def test_code_digest_known_value() -> None:
    # Same as coreutils on an unpacked app: `printf x > a; sha256sum a | sha256sum`.
    assert code_digest({"a": b"x"}) == (
        "4a4b874a1e9776a52e38fd82a053825f309f46187a803a0fc0c6670c6670e768")
    # `find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum | sha256sum`
    assert code_digest({"b/x.py": b"1", "a.py": b"2"}) == (
        "52d106ae953855d5da2b2ce2b13cfba6e534352107dbf6bb686d0ba649361fab")
    assert code_digest({}) == hashlib.sha256(b"").hexdigest()


def test_info_manifest_is_not_part_of_the_code() -> None:
    files = bundle_files(fab_bytes(APP))
    assert set(files) == set(APP) and files == APP


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(APP)), st.integers(1980, 2100))
def test_code_hash_ignores_packing_but_fab_hash_does_not(order: list[str], year: int) -> None:
    fab = fab_bytes(APP, order=order, date=(year, 1, 1, 0, 0, 0))
    pin = CodePin(code_sha256=frozenset({code_digest(APP)}))
    assert decide(fab, pin=pin).accepted
    reference = fab_bytes(APP)
    if fab != reference:
        assert not decide(fab, pin=CodePin(
            fab_sha256=frozenset({hashlib.sha256(reference).hexdigest()}))).accepted


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(APP)), st.data())
def test_tampered_bundle_is_refused_for_any_one_byte_change(name: str,
                                                           data: st.DataObject) -> None:
    original = APP[name] or b"\n"
    files = {**APP, name: original}
    at = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = {**files, name: original[:at] + bytes([original[at] ^ flip]) + original[at + 1:]}
    good, bad = fab_bytes(files), fab_bytes(tampered)
    for pin in (CodePin(code_sha256=frozenset({code_digest(files)})),
                CodePin(fab_sha256=frozenset({hashlib.sha256(good).hexdigest()}))):
        assert decide(good, pin=pin).accepted
        refused = decide(bad, pin=pin)
        assert not refused.accepted and "matches no pinned hash" in refused.reason
        assert refused.fab_sha256 == hashlib.sha256(bad).hexdigest()


def test_claimed_hash_is_recomputed_not_trusted() -> None:
    fab = fab_bytes(APP)
    real = hashlib.sha256(fab).hexdigest()
    pin = CodePin(fab_sha256=frozenset({real}))
    assert decide(fab, pin=pin, claimed_sha256=real).accepted
    lie = decide(fab, pin=pin, claimed_sha256="0" * 64)
    assert not lie.accepted and "claims hash 000000000000" in lie.reason


@pytest.mark.parametrize("name", ["../escape.py", "/etc/cron.d/x", "a/./b.py", "a\\b.py"])
def test_path_traversal_names_are_refused(name: str) -> None:
    fab = fab_bytes(APP, extra=[zipfile.ZipInfo(name, (2024, 10, 1, 0, 0, 0))])
    with pytest.raises(BundleRefused, match="unsafe file name"):
        bundle_files(fab)
    assert not decide(fab, pin=CodePin.installed(), installed={}).accepted


def test_symlink_and_duplicate_entries_are_refused() -> None:
    link = zipfile.ZipInfo("app/link.py", (2024, 10, 1, 0, 0, 0))
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(BundleRefused, match="symbolic link"):
        bundle_files(fab_bytes(APP, extra=[link]))
    dup = zipfile.ZipInfo("app/client.py", (2024, 10, 1, 0, 0, 0))
    with pytest.warns(UserWarning), pytest.raises(BundleRefused, match="same file twice"):
        bundle_files(fab_bytes(APP, extra=[dup]))


def test_garbage_is_refused_not_crashed() -> None:
    decision = decide(b"not a zip", pin=CodePin.installed(), installed={})
    assert not decision.accepted and "not a readable zip" in decision.reason


# --------------------------------------------------- only code of the installed fedadmet


def test_config_only_bundle_naming_installed_clientapp_is_accepted() -> None:
    decision = decide(fab_bytes({"pyproject.toml": PYPROJECT}), pin=CodePin.installed(),
                      installed=installed_digests())
    assert decision.accepted, decision.reason
    assert "no code beyond the installed fedadmet" in decision.reason


def test_bundle_with_identical_copy_of_installed_code_is_accepted() -> None:
    ours = (ROOT / "participant" / "client_app.py").read_bytes()
    files = {"pyproject.toml": PYPROJECT, "participant/client_app.py": ours}
    assert decide(fab_bytes(files), pin=CodePin.installed(),
                  installed=installed_digests()).accepted


def test_bundle_with_modified_installed_module_is_refused() -> None:
    ours = (ROOT / "participant" / "client_app.py").read_bytes()
    files = {"pyproject.toml": PYPROJECT,
             "participant/client_app.py": ours.replace(b"Site(", b"Sit3(", 1)}
    decision = decide(fab_bytes(files), pin=CodePin.installed(), installed=installed_digests())
    assert not decision.accepted
    assert "participant/client_app.py differs from the installed" in decision.reason


def test_bundle_carrying_new_code_is_refused() -> None:
    files = {"pyproject.toml": PYPROJECT, "sitecustom.py": b"import os\n"}
    decision = decide(fab_bytes(files), pin=CodePin.installed(), installed=installed_digests())
    assert not decision.accepted
    assert "carries sitecustom.py, which the installed fedadmet does not have" in decision.reason


@pytest.mark.parametrize("ref", ["app.client:app", "os:system", "participant-x.y:app", ""])
def test_clientapp_outside_the_installed_packages_is_refused(ref: str) -> None:
    toml = PYPROJECT.replace(b"participant.client_app:app", ref.encode())
    decision = decide(fab_bytes({"pyproject.toml": toml}), pin=CodePin.installed(),
                      installed=installed_digests())
    assert not decision.accepted and "is not in the installed packages" in decision.reason


def test_bundle_without_config_is_refused() -> None:
    decision = decide(fab_bytes({"x.txt": b"x"}), pin=CodePin.installed(), installed={})
    assert not decision.accepted and "has no pyproject.toml" in decision.reason


def test_installed_digests_cover_the_participant_package() -> None:
    digests = installed_digests()
    body = (ROOT / "participant" / "pinning.py").read_bytes()
    assert digests["participant/pinning.py"] == hashlib.sha256(body).hexdigest()
    assert not any(p.startswith(("tests/", ".venv/")) for p in digests)


# ------------------------------------------------------------------ the pin itself


def test_a_pin_that_accepts_nothing_is_refused() -> None:
    with pytest.raises(ConfigError, match="accepts nothing"):
        CodePin()


@pytest.mark.parametrize("bad", ["ABC", "0" * 63, "g" * 64, "0" * 64 + " "])
def test_pinned_hashes_must_be_sha256_hex(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a SHA-256 hex digest"):
        CodePin(fab_sha256=frozenset({bad}))


def test_pin_round_trips_through_its_mapping() -> None:
    pin = CodePin(fab_sha256=frozenset({"a" * 64}), code_sha256=frozenset({"b" * 64}),
                  installed_fedadmet=True)
    assert CodePin.from_mapping(pin.to_mapping()) == pin
    with pytest.raises(ConfigError, match="unknown key"):
        CodePin.from_mapping({"fab-sha": ["a" * 64]})
    with pytest.raises(ConfigError, match="list of SHA-256"):
        CodePin.from_mapping({"fab-sha256": "a" * 64})
    with pytest.raises(ConfigError, match="true or false"):
        CodePin.from_mapping({"installed-fedadmet": "yes"})


# --------------------------------------------------- bounded unpacking (issue 14 §4)
def _bomb(entries: Mapping[str, int], *, level: int = 9) -> bytes:
    """A deflated zip whose entries are ``size`` zero bytes each, written in 1 MiB slices."""
    buf = io.BytesIO()
    zero = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        for name, size in entries.items():
            info = zipfile.ZipInfo(name, (2024, 10, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w") as f:
                for start in range(0, size, len(zero)):
                    f.write(zero[:min(len(zero), size - start)])
    return buf.getvalue()


def _peak_while(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(BundleRefused):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zip_bomb_entry_is_refused_before_decompressing() -> None:
    """A 64 MiB declared entry from a ~64 KiB bundle: refused from its header, no growth."""
    fab = _bomb({"app/client.py": 64 << 20})
    assert len(fab) < 256 << 10
    with pytest.raises(BundleRefused, match="entry is too large"):
        bundle_files(fab)
    assert _peak_while(lambda: bundle_files(fab)) < 2 << 20
    assert not decide(fab, pin=CodePin.installed(), installed={}).accepted


def test_bundle_whose_entries_sum_past_the_total_is_refused() -> None:
    n = MAX_TOTAL_BYTES // MAX_ENTRY_BYTES + 1
    fab = _bomb({f"app/m{i}.py": MAX_ENTRY_BYTES for i in range(n)}, level=1)
    with pytest.raises(BundleRefused, match="unpacks to too many bytes"):
        bundle_files(fab)
    assert _peak_while(lambda: bundle_files(fab)) < 2 << 20


def test_bundle_with_thousands_of_entries_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(MAX_ENTRIES + 1):
            z.writestr(f"app/m{i}.py", b"")
    with pytest.raises(BundleRefused, match="too many entries"):
        bundle_files(buf.getvalue())


def _lie_about_size(fab: bytes, name: bytes, declared: int) -> bytes:
    """Rewrite ``name``'s uncompressed size in its local and central headers."""
    data = bytearray(fab)
    for sig, offset, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(sig)
        while at >= 0 and data[at + name_at:at + name_at + len(name)] != name:
            at = data.find(sig, at + 1)
        assert at >= 0
        data[at + offset:at + offset + 4] = struct.pack("<I", declared)
    return bytes(data)


def test_lying_zip_header_cannot_inflate_past_its_declared_size() -> None:
    """The headers declare 100 bytes; the stream inflates to 16 MiB of zeros."""
    fab = _lie_about_size(_bomb({"app/client.py": 16 << 20}), b"app/client.py", 100)
    assert zipfile.ZipFile(io.BytesIO(fab)).getinfo("app/client.py").file_size == 100
    with pytest.raises(BundleRefused):
        bundle_files(fab)
    assert _peak_while(lambda: bundle_files(fab)) < 2 << 20


def test_oversized_fab_is_refused_before_it_is_opened() -> None:
    with pytest.raises(BundleRefused, match="bundle is too large"):
        bundle_files(bytes(MAX_FAB_BYTES + 1))


# --------------------------------------------------- one code hash, one bundle
def test_newline_in_a_file_name_cannot_forge_the_code_hash() -> None:
    """`app/__init__.py\\n<sha>  app/client.py` hashes like the two real files."""
    forged_name = (f"app/__init__.py\n{hashlib.sha256(APP['app/client.py']).hexdigest()}"
                   "  app/client.py")
    forged = {forged_name: APP["app/__init__.py"], "pyproject.toml": APP["pyproject.toml"]}
    assert code_digest(forged) == code_digest(APP)  # the collision the digest alone allows
    pin = CodePin(code_sha256=frozenset({code_digest(APP)}))
    assert decide(fab_bytes(APP), pin=pin).accepted
    fab = fab_bytes(forged)
    with pytest.raises(BundleRefused, match="unsafe file name"):
        bundle_files(fab)
    assert not decide(fab, pin=pin).accepted


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x1b", "\x7f", "\x85",
                                  "\u2028", "\u202e", "\ufeff"])
def test_control_characters_in_file_names_are_refused(char: str) -> None:
    fab = fab_bytes({**APP, f"app/evil{char}.py": b""})
    with pytest.raises(BundleRefused, match="unsafe file name"):
        bundle_files(fab)
