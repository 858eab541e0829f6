"""Typed, validated access to kebab-case config tables.

Coordinator, participant and scenario configs are TOML files (or Flower
run/node config) with kebab-case keys, as Flower's own ``[tool.flwr.app.config]``
uses. They are validated once, at the edge, with this reader: every value is
checked for type and range, unknown keys are refused (a typo must not silently
fall back to a default), and every error names the key, the source file, what
was got and what was expected.

The reader is pure: it takes an already-parsed mapping. :func:`read_toml` is the one
function here that reads a file, so that every config file (``federation.toml``,
``coordinator.toml``, ``participant.toml``, scenarios) fails the same way, with the file,
the line and the fix, instead of each loader mapping the parser's errors its own way.
:class:`ConfigPaths` resolves the path values of a table against the file's folder;
:func:`default_tracking_uri` is the MLflow store a config falls back to.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from protocols.errors import ConfigError

T = TypeVar("T")

__all__ = ["ConfigPaths", "Table", "default_tracking_uri", "read_toml"]


def read_toml(path: Path, *, key: str = "config", not_found: str = "file not found",
              expected: str | None = None, fix: str | None = None) -> dict[str, Any]:
    """Parse the TOML file ``path``; every failure is a :class:`ConfigError` on ``key``.

    ``not_found``, ``expected`` and ``fix`` describe a missing file (each loader knows
    which command creates it). Bytes that are not UTF-8, and TOML syntax errors, name the
    file and the line.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(key, not_found, got=str(path), expected=expected, fix=fix) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(key, f"is not UTF-8 text (byte {data[exc.start]:#04x} on line "
                          f"{line})", got=str(path), expected="a UTF-8 TOML file",
                          fix="save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(key, f"is not valid TOML ({exc})", got=str(path),
                          fix="correct the TOML syntax at that line") from None


class ConfigPaths:
    """Path values of a config: ``~`` expanded, relative ones against ``base_dir``.

    ``base_dir`` is the config file's folder, so a site or coordinator directory can be
    moved as a whole.
    """

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    @overload
    def __call__(self, value: str) -> Path: ...
    @overload
    def __call__(self, value: None) -> None: ...
    @overload
    def __call__(self, value: str | None) -> Path | None: ...

    def __call__(self, value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()


def default_tracking_uri(state_dir: Path) -> str:
    """The MLflow store a config without ``tracking-uri`` uses: SQLite in the state dir."""
    return f"sqlite:///{(state_dir / 'mlflow.db').resolve()}"


class Table:
    """A view of one config table that records which keys were read.

    Call :meth:`finish` after reading to refuse keys nobody asked for.
    """

    def __init__(self, data: Mapping[str, Any], *, path: str = "", source: str | None = None):
        if not isinstance(data, Mapping):
            raise ConfigError(
                path or "<root>", "expected a table", got=data, expected="a TOML table",
                source=source,
            )
        self._data = dict(data)
        self._path = path
        self._source = source
        self._seen: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str, message: str, *, got: Any = None, expected: Any = None,
              fix: str | None = None) -> ConfigError:
        """Build a ConfigError for ``key`` in this table."""
        return ConfigError(self._key(key), message, got=got, expected=expected, fix=fix,
                           source=self._source)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present."""
        return key in self._data

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if required:
                raise self.error(key, "is required but missing", fix=f"add `{key} = ...`")
            return default
        return self._data[key]

    # ------------------------------------------------------------------ scalars
    def text(self, key: str, default: str | None = None, *, required: bool = False,
            choices: Iterable[str] | None = None) -> str:
        """A string value, optionally restricted to ``choices``."""
        value = self._get(key, default, required or default is None)
        if not isinstance(value, str):
            raise self.error(key, "must be a string", got=value, expected="a string")
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise self.error(key, "is not one of the allowed values", got=value,
                                 expected=" | ".join(allowed))
        return value

    def optional_text(self, key: str) -> str | None:
        """A string value, or None when absent or empty."""
        value = self._get(key, None, False)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(key, "must be a string", got=value, expected="a string")
        return value

    def integer(self, key: str, default: int | None = None, *, required: bool = False,
            min: int | None = None, max: int | None = None) -> int:
        """An integer value within ``[min, max]``."""
        value = self._get(key, default, required or default is None)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be an integer", got=value, expected="an integer")
        self._check_range(key, value, min, max)
        return value

    def number(self, key: str, default: float | None = None, *, required: bool = False,
              min: float | None = None, max: float | None = None, min_exclusive: bool = False,
              allow_inf: bool = False) -> float:
        """A float value (integers accepted) within range."""
        value = self._get(key, default, required or default is None)
        if isinstance(value, str) and allow_inf and value.lower() in ("inf", "infinity"):
            value = math.inf
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, "must be a number", got=value, expected="a number")
        number = float(value)
        if math.isnan(number) or (math.isinf(number) and not allow_inf):
            raise self.error(key, "must be finite", got=value, expected="a finite number")
        if min is not None and min_exclusive and not number > min:
            raise self.error(key, "is out of range", got=value, expected=f"a number > {min}")
        self._check_range(key, number, None if min_exclusive else min, max)
        return number

    def boolean(self, key: str, default: bool | None = None, *, required: bool = False) -> bool:
        """A boolean value (TOML true/false only: no truthy strings)."""
        value = self._get(key, default, required or default is None)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false", got=value, expected="true | false")
        return value

    def _check_range(self, key: str, value: float, lo: float | None, hi: float | None) -> None:
        if lo is not None and value < lo:
            raise self.error(key, "is out of range", got=value, expected=f">= {lo}")
        if hi is not None and value > hi:
            raise self.error(key, "is out of range", got=value, expected=f"<= {hi}")

    # ------------------------------------------------------------------ containers
    def array(self, key: str, default: list[Any] | None = None, *, required: bool = False,
             item_type: type | tuple[type, ...] | None = None, min_len: int = 0) -> list[Any]:
        """A list value whose items all have ``item_type``."""
        value = self._get(key, default, required or default is None)
        if not isinstance(value, list):
            raise self.error(key, "must be a list", got=value, expected="a TOML array")
        if len(value) < min_len:
            raise self.error(key, f"needs at least {min_len} item(s)", got=value)
        if item_type is not None:
            for item in value:
                if isinstance(item, bool) and item_type is not bool:
                    raise self.error(key, "has an item of the wrong type", got=item,
                                     expected=str(item_type))
                if not isinstance(item, item_type):
                    raise self.error(key, "has an item of the wrong type", got=item,
                                     expected=str(item_type))
        return list(value)

    def table(self, key: str, *, required: bool = False) -> Table:
        """A nested table (an empty one when absent and not required)."""
        value = self._get(key, {}, required)
        return Table(value, path=self._key(key), source=self._source)

    def tables(self, key: str) -> dict[str, Table]:
        """A table of tables, e.g. ``[endpoints.lipophilicity]``."""
        value = self._get(key, {}, False)
        if not isinstance(value, Mapping):
            raise self.error(key, "must be a table of tables", got=value)
        return {
            str(name): Table(sub, path=self._key(f"{key}.{name}"), source=self._source)
            for name, sub in value.items()
        }

    def array_of_tables(self, key: str) -> list[Table]:
        """An array of tables, e.g. ``[[model.endpoints]]``."""
        value = self._get(key, [], False)
        if not isinstance(value, list):
            raise self.error(key, "must be an array of tables", got=value)
        return [Table(v, path=f"{self._key(key)}[{i}]", source=self._source)
                for i, v in enumerate(value)]

    def finish(self) -> None:
        """Refuse keys that were never read: they are typos or unsupported options."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.error(
                unknown[0],
                "is not a known option",
                got=unknown,
                expected=f"only known keys ({', '.join(sorted(self._seen)) or 'none'})",
                fix="check the spelling against the documented config",
            )
