"""What a featurizer is, and how wide its vectors are, without importing RDKit.

The coordinator announces the federation's :class:`FeaturizationSpec` and
sizes the shared model's input from it; it never computes a feature, so it
never needs RDKit's C++ library. Everything here is therefore a pure function
of the spec: the width of ``rdkit2d`` descriptors is pinned in the spec's
parameters (``n_descriptors``), and :func:`chem.featurizers.check_compatible`
checks that pin, and the RDKit version, against the RDKit a site computes with.

The RDKit version is read from the installed distribution's metadata
(``importlib.metadata``), which imports nothing; it is written the way RDKit
writes ``rdkit.__version__`` (``2026.09.1``: zero-padded month), so the
coordinator and a site name it identically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

from protocols.canonical import canonical_json, sha256_hex
from protocols.errors import ConfigError

__all__ = [
    "STANDARDIZER_VERSION",
    "FeaturizationSpec",
    "available_featurizers",
    "feature_dim",
    "get_spec",
    "rdkit_version",
]

# The version of chem.standardize's pipeline: bump it when its steps change (see that
# module). It lives here so that a spec can be built without importing RDKit.
STANDARDIZER_VERSION = "rdmolstd/v1"

# len(rdkit.Chem.Descriptors._descList) of the RDKit release fedadmet is tested with;
# a site whose RDKit computes another number refuses the spec (chem.featurizers).
RDKIT2D_DESCRIPTORS = 217


@lru_cache(maxsize=1)
def rdkit_version() -> str:
    """The installed RDKit's version as ``rdkit.__version__`` spells it, read without import."""
    try:
        version = metadata.version("rdkit")
    except metadata.PackageNotFoundError:
        # A build without a dist-info (some conda packages): only the module can tell.
        import rdkit

        return str(rdkit.__version__)
    year, _, rest = version.partition(".")
    month, _, tail = rest.partition(".")
    # PEP 440 drops the month's leading zero (2026.09.1 -> 2026.9.1); RDKit keeps it.
    return f"{year}.{int(month):02d}.{tail}" if month.isdigit() and tail else version


@dataclass(frozen=True, kw_only=True)
class FeaturizationSpec:
    """What a featurizer is, exactly enough for two sites to agree."""

    name: str
    version: str
    params: Mapping[str, Any] = field(default_factory=dict)
    rdkit_version: str = field(default_factory=rdkit_version)
    standardizer_version: str = STANDARDIZER_VERSION

    @property
    def key(self) -> str:
        """Registry key, ``name/version``."""
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "version": self.version,
            "params": dict(self.params),
            "rdkit_version": self.rdkit_version,
            "standardizer_version": self.standardizer_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeaturizationSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(name=str(data["name"]), version=str(data["version"]),
                   params=dict(data.get("params", {})),
                   rdkit_version=str(data["rdkit_version"]),
                   standardizer_version=str(data["standardizer_version"]))

    def digest(self) -> str:
        """SHA-256 hex of the RFC 8785 canonical JSON of :meth:`to_dict`."""
        return sha256_hex(canonical_json(self.to_dict()))


def _ecfp_width(params: Mapping[str, Any]) -> int:
    return int(params["n_bits"])


def _rdkit2d_width(params: Mapping[str, Any]) -> int:
    return int(params["n_descriptors"])


# key -> (parameters, width as a function of them)
_REGISTRY: dict[str, tuple[dict[str, Any], Callable[[Mapping[str, Any]], int]]] = {
    "ecfp4-count-2048/v1": ({"radius": 2, "n_bits": 2048, "counts": True, "transform": "log1p"},
                            _ecfp_width),
    "rdkit2d/v1": ({"descriptors": "Descriptors._descList sorted by name",
                    "n_descriptors": RDKIT2D_DESCRIPTORS,
                    "transform": "sign*log1p|x|, nonfinite->0, clip[-20,20]"},
                   _rdkit2d_width),
    "ecfp4-count-2048+rdkit2d/v1": ({"radius": 2, "n_bits": 2048, "counts": True,
                                     "n_descriptors": RDKIT2D_DESCRIPTORS,
                                     "transform": "log1p; rdkit2d sign*log1p|x| clip[-20,20]"},
                                    lambda p: _ecfp_width(p) + _rdkit2d_width(p)),
}


def available_featurizers() -> list[str]:
    """Registered featurizer keys."""
    return sorted(_REGISTRY)


def _entry(key: str) -> tuple[dict[str, Any], Callable[[Mapping[str, Any]], int]]:
    if key not in _REGISTRY:
        raise ConfigError("featurizer", "unknown featurizer", got=key,
                          expected=" | ".join(available_featurizers()))
    return _REGISTRY[key]


def get_spec(key: str) -> FeaturizationSpec:
    """The spec of a registered featurizer for this host's RDKit version."""
    params, _ = _entry(key)
    name, version = key.rsplit("/", 1)
    return FeaturizationSpec(name=name, version=version, params=dict(params))


def feature_dim(spec: FeaturizationSpec) -> int:
    """Width of the feature vectors ``spec`` produces: a function of its parameters only."""
    _, width = _entry(spec.key)
    try:
        return width(spec.params)
    except (KeyError, TypeError, ValueError):
        raise ConfigError("featurizer", "the spec's parameters do not give a width",
                          got=dict(spec.params), expected=_entry(spec.key)[0],
                          fix="use the spec of a registered featurizer (chem.featurization_spec"
                          ".get_spec)") from None
