"""Which ClientApp bundles (FABs) a member runs: a pure decision over the bundle's bytes.

With a stock SuperNode the ClientApp code comes from the coordinator's FAB, so the
coordinator could push new code next to a member's data. A :class:`CodePin` says what
this member accepts, as any of three rules (a bundle passing one of them runs):

* ``fab_sha256``: the SHA-256 of the whole FAB, as ``flwr build`` prints it;
* ``code_sha256``: :func:`code_digest` over every file the FAB installs (path and
  content, independent of how the zip was packed; ``.info/`` is dropped by Flower);
* ``installed_fedadmet``: the FAB carries no code beyond the installed fedadmet: its
  ``pyproject.toml`` names a ClientApp in an installed package (``participant`` by
  default) and every other file is byte-identical to the installed copy.

The archive is read under hard limits (:data:`MAX_FAB_BYTES`, :data:`MAX_ENTRIES`,
:data:`MAX_ENTRY_BYTES`, :data:`MAX_TOTAL_BYTES`): the sizes the zip declares are checked
before anything is decompressed, and every entry is streamed with a byte limit because
those headers can lie. Names with control characters are refused, so
:func:`code_digest`'s ``"<sha>  <path>\n"`` lines cannot be forged inside a name.

No I/O here: the shell (:mod:`participant.pinned_clientapp`) hands in the bytes and the
installed files' digests and acts on the :class:`PinDecision`.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tomllib
import unicodedata
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols.errors import ConfigError, IntegrityError

__all__ = [
    "BundleRefused",
    "CodePin",
    "PinDecision",
    "bundle_files",
    "code_digest",
    "decide",
]

CONFIG_FILE = "pyproject.toml"
INFO_DIR = ".info/"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# A ClientApp bundle is source code: fedadmet's own packages unpack to under 1 MiB.
MAX_FAB_BYTES = 10 * 1024 * 1024  # flwr 1.41's FAB_MAX_SIZE
MAX_ENTRIES = 4096
MAX_ENTRY_BYTES = 8 * 1024 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
_READ_CHUNK = 64 * 1024
# Control, format and line/paragraph separator characters (Unicode categories).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class BundleRefused(IntegrityError):
    """A ClientApp bundle does not match this member's code pin; nothing of it runs."""


def _hashes(values: Any, key: str) -> frozenset[str]:
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"code-pin.{key}", "must be a list of SHA-256 hex strings", got=values)
    bad = [v for v in values if not _HEX64.match(v)]
    if bad:
        raise ConfigError(f"code-pin.{key}", "holds a value that is not a SHA-256 hex digest",
                          got=bad[0], expected="64 lowercase hex characters",
                          fix="copy the hash that `flwr build` or `fedadmet` printed")
    return frozenset(values)


@dataclass(frozen=True, kw_only=True)
class CodePin:
    """The code a member accepts. At least one rule must be set (fail closed)."""

    fab_sha256: frozenset[str] = frozenset()
    code_sha256: frozenset[str] = frozenset()
    installed_fedadmet: bool = False
    clientapp_packages: frozenset[str] = field(default_factory=lambda: frozenset({"participant"}))

    def __post_init__(self) -> None:
        _hashes(self.fab_sha256, "fab-sha256")
        _hashes(self.code_sha256, "code-sha256")
        if not (self.fab_sha256 or self.code_sha256 or self.installed_fedadmet):
            raise ConfigError("code-pin", "the code pin accepts nothing", got="no rule set",
                              expected="fab-sha256, code-sha256 or installed-fedadmet = true",
                              fix="pin the FAB you reviewed, or set installed-fedadmet = true")
        if not self.clientapp_packages or not all(
                _MODULE.match(p) and "." not in p for p in self.clientapp_packages):
            raise ConfigError("code-pin.clientapp-packages", "must be top-level package names",
                              got=sorted(self.clientapp_packages))

    @classmethod
    def installed(cls) -> CodePin:
        """The default: run only ClientApps that are already installed here."""
        return cls(installed_fedadmet=True)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> CodePin:
        """From a ``[code-pin]`` TOML table or :meth:`to_mapping`'s JSON."""
        known = {"fab-sha256", "code-sha256", "installed-fedadmet", "clientapp-packages"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError("code-pin", "unknown key", got=unknown, expected=sorted(known))
        installed = raw.get("installed-fedadmet", False)
        if not isinstance(installed, bool):
            raise ConfigError("code-pin.installed-fedadmet", "must be true or false", got=installed)
        packages = raw.get("clientapp-packages", ["participant"])
        if isinstance(packages, str) or not all(isinstance(p, str) for p in packages):
            raise ConfigError("code-pin.clientapp-packages", "must be a list of names",
                              got=packages)
        return cls(fab_sha256=_hashes(raw.get("fab-sha256", []), "fab-sha256"),
                   code_sha256=_hashes(raw.get("code-sha256", []), "code-sha256"),
                   installed_fedadmet=installed, clientapp_packages=frozenset(packages))

    def to_mapping(self) -> dict[str, Any]:
        return {"fab-sha256": sorted(self.fab_sha256), "code-sha256": sorted(self.code_sha256),
                "installed-fedadmet": self.installed_fedadmet,
                "clientapp-packages": sorted(self.clientapp_packages)}

    def describe(self) -> str:
        rules = [f"FAB sha256 {h[:12]}..." for h in sorted(self.fab_sha256)]
        rules += [f"code sha256 {h[:12]}..." for h in sorted(self.code_sha256)]
        if self.installed_fedadmet:
            rules.append("code identical to the installed fedadmet "
                         f"(ClientApp in {', '.join(sorted(self.clientapp_packages))})")
        return "; ".join(rules)


@dataclass(frozen=True, kw_only=True)
class PinDecision:
    """``reason`` is one plain-language sentence, logged as is."""

    accepted: bool
    reason: str
    fab_sha256: str
    code_sha256: str | None = None


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name
            and not any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in name)
            and all(p not in ("", ".", "..") for p in parts))


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Decompress one entry, never holding more than ``limit`` bytes of it."""
    chunks: list[bytes] = []
    size = 0
    with archive.open(info) as entry:
        while chunk := entry.read(min(_READ_CHUNK, limit + 1 - size)):
            size += len(chunk)
            if size > limit:
                raise BundleRefused("a bundle entry inflates beyond its declared size or the "
                                    "limit", got=info.filename,
                                    expected=f"at most {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _check_declared_sizes(infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_ENTRIES:
        raise BundleRefused("the bundle holds too many entries", got=len(infos),
                            expected=f"at most {MAX_ENTRIES}")
    for info in infos:
        if info.file_size > MAX_ENTRY_BYTES:
            raise BundleRefused("a bundle entry is too large", got=(info.filename,
                                info.file_size), expected=f"at most {MAX_ENTRY_BYTES} bytes")
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        raise BundleRefused("the bundle unpacks to too many bytes", got=total,
                            expected=f"at most {MAX_TOTAL_BYTES} bytes")


def bundle_files(fab: bytes) -> dict[str, bytes]:
    """The files Flower would install from ``fab`` (``.info/`` dropped).

    Refuses (:class:`BundleRefused`) what an unzip could turn into something other than
    these bytes (unsafe or duplicate names, control characters, links, unreadable
    archives) and what exceeds the size limits, before and while decompressing.
    """
    if len(fab) > MAX_FAB_BYTES:
        raise BundleRefused("the bundle is too large", got=len(fab),
                            expected=f"at most {MAX_FAB_BYTES} bytes")
    try:
        archive = zipfile.ZipFile(io.BytesIO(fab))
        infos = archive.infolist()
        _check_declared_sizes(infos)
        files: dict[str, bytes] = {}
        budget = MAX_TOTAL_BYTES
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename
            if not _safe_name(name):
                raise BundleRefused("the bundle holds an unsafe file name", got=name)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BundleRefused("the bundle holds a symbolic link", got=name)
            if name in files:
                raise BundleRefused("the bundle holds the same file twice", got=name)
            # Each entry is held to the size it declared (already capped): headers can lie.
            files[name] = _read_bounded(archive, info, min(info.file_size, budget))
            budget -= len(files[name])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise BundleRefused("the bundle is not a readable zip archive", got=str(exc)) from exc
    return {k: v for k, v in files.items() if not k.startswith(INFO_DIR)}


def code_digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 over ``"<sha256 of content>  <path>\\n"`` lines sorted by path."""
    lines = "".join(f"{hashlib.sha256(files[p]).hexdigest()}  {p}\n" for p in sorted(files))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _beyond_installed(files: Mapping[str, bytes], *, installed: Mapping[str, str],
                      packages: frozenset[str]) -> str | None:
    """Why the bundle carries code beyond the installed fedadmet, or None if it does not."""
    if CONFIG_FILE not in files:
        return f"it has no {CONFIG_FILE}"
    try:
        config = tomllib.loads(files[CONFIG_FILE].decode("utf-8"))
        ref = config["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        return f"its {CONFIG_FILE} names no ClientApp ({type(exc).__name__})"
    module = str(ref).partition(":")[0]
    if not _MODULE.match(module) or module.split(".")[0] not in packages:
        return (f"its ClientApp {ref!r} is not in the installed packages "
                f"{', '.join(sorted(packages))}")
    for path in sorted(files):
        if path == CONFIG_FILE:
            continue
        want = installed.get(path)
        if want is None:
            return f"it carries {path}, which the installed fedadmet does not have"
        if hashlib.sha256(files[path]).hexdigest() != want:
            return f"its {path} differs from the installed fedadmet's copy"
    return None


def decide(fab: bytes, *, pin: CodePin, claimed_sha256: str | None = None,
           installed: Mapping[str, str] | None = None) -> PinDecision:
    """Accept ``fab`` only if one of ``pin``'s rules matches.

    ``claimed_sha256`` is the hash the SuperNode was told (never trusted: it must equal the
    content's). ``installed`` maps installed file paths (relative to the directory holding
    the fedadmet packages) to their SHA-256; required when ``pin.installed_fedadmet``.
    """
    fab_hash = hashlib.sha256(fab).hexdigest()
    if claimed_sha256 is not None and claimed_sha256 != fab_hash:
        return PinDecision(accepted=False, fab_sha256=fab_hash, reason=(
            f"the bundle claims hash {claimed_sha256[:12]}... but its content hashes to "
            f"{fab_hash[:12]}..."))
    if fab_hash in pin.fab_sha256:
        return PinDecision(accepted=True, fab_sha256=fab_hash,
                           reason=f"the bundle's FAB sha256 {fab_hash[:12]}... is pinned")
    try:
        files = bundle_files(fab)
    except BundleRefused as exc:
        return PinDecision(accepted=False, fab_sha256=fab_hash, reason=exc.diagnostics())
    code = code_digest(files)
    if code in pin.code_sha256:
        return PinDecision(accepted=True, fab_sha256=fab_hash, code_sha256=code,
                           reason=f"the bundle's code sha256 {code[:12]}... is pinned")
    why = "it matches no pinned hash"
    if pin.installed_fedadmet:
        if installed is None:
            raise ValueError("installed file digests are required for installed_fedadmet")
        beyond = _beyond_installed(files, installed=installed, packages=pin.clientapp_packages)
        if beyond is None:
            return PinDecision(accepted=True, fab_sha256=fab_hash, code_sha256=code,
                               reason="the bundle carries no code beyond the installed fedadmet")
        why = beyond
    return PinDecision(accepted=False, fab_sha256=fab_hash, code_sha256=code, reason=(
        f"{why} (FAB sha256 {fab_hash}, code sha256 {code}; this member accepts "
        f"{pin.describe()})"))
