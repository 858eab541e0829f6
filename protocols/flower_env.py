"""The environment every Flower process we start runs with (SuperLink, SuperNode, SuperExec).

Flower reads its configuration from environment variables as well as flags, and some of
them change what is exposed: ``FLWR_INTERNAL_GRPC_CONTROL_API=1`` makes flwr 1.41's
SuperLink open gRPC Control and Fleet servers on ``0.0.0.0``, ``FLWR_PRIVATE_*`` resize
what is pushed, ``FLWR_OIDC_ENABLED``/``FLWR_ENABLE_EVENT_LOG`` load plugins. So no
Flower process inherits its caller's environment: it gets the allow-listed variables a
process needs to run (paths, locale, proxies, CA bundles), the settings each launcher
passes explicitly, and :data:`QUIET`, which turns off Flower's telemetry, update check,
tracing and runtime installs last, so nothing can turn them back on.

Pure: the caller hands in the environment to filter.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ALLOWED", "QUIET", "flower_env"]

# What a Python process needs to find itself, its locale and the network; of Flower's,
# only where its config lives and how much it logs. Proxies stay: a member's outbound
# HTTPS may have to cross one.
ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
    "NO_PROXY", "no_proxy", "FLWR_HOME", "FLWR_LOG_LEVEL",
    # the ServerApp's MLflow credentials (the tracking URI itself is in federation.toml)
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
})
_ALLOWED_PREFIXES = ("LC_",)

QUIET: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TRACING_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None
               ) -> dict[str, str]:
    """``base`` filtered to :data:`ALLOWED`, then ``extra`` as given, then :data:`QUIET`."""
    env = {k: v for k, v in base.items()
           if k in ALLOWED or k.startswith(_ALLOWED_PREFIXES)}
    env.update(extra or {})
    env.update(QUIET)
    return env
