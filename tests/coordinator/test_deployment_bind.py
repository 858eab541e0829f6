"""The coordinator directory: where its nginx binds (real nginx on loopback addresses)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from coordinator.deployment import CoordinatorServices, Deployment, init_deployment
from coordinator.proxy import NGINX, listen_target, nginx_config
from protocols.errors import DeploymentError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def _deployment(tmp_path: Path, public: str, listen: str | None = None) -> Deployment:
    assert Path(NGINX).exists(), f"nginx is required at {NGINX}"
    init_deployment(tmp_path / "fl", public_address=public, port=_free_port(), rounds=1,
                    round_timeout=60.0, min_participants=1, endpoints=["logs:regression"],
                    listen_address=listen)
    return Deployment.load(tmp_path / "fl")


def test_listen_target_brackets_ipv6_hosts() -> None:
    assert listen_target("127.0.0.1", 443) == "127.0.0.1:443"
    assert listen_target("::1", 8443) == "[::1]:8443"
    assert listen_target("[::]", 443) == "[::]:443"
    conf = nginx_config(prefix=Path("/p"), listen_host="::1", listen_port=443,
                        upstream_port=9443, server_cert=Path("s"), server_key=Path("k"),
                        ca_cert=Path("c"))
    assert "listen [::1]:443 ssl;" in conf


def test_nginx_binds_the_public_address_host_not_every_interface(tmp_path: Path) -> None:
    """Before: nginx listened on 0.0.0.0 whatever --public-address said."""
    port = _free_port()
    dep = _deployment(tmp_path, f"127.0.0.1:{port}")
    assert dep.proxy_listen() == ("127.0.0.1", port)
    with CoordinatorServices(dep) as services:
        services.start_proxy()
        assert _accepts("127.0.0.1", port)
        assert not _accepts("127.0.0.2", port)  # another loopback address: not bound


def test_listen_address_binds_every_interface_when_asked(tmp_path: Path) -> None:
    port = _free_port()
    dep = _deployment(tmp_path, f"fl.example.org:{port}", listen=f"0.0.0.0:{port}")
    with CoordinatorServices(dep) as services:
        services.start_proxy()
        assert _accepts("127.0.0.1", port) and _accepts("127.0.0.2", port)


def test_public_host_that_is_not_this_machine_fails_with_the_fix(tmp_path: Path) -> None:
    port = _free_port()
    dep = _deployment(tmp_path, f"fl.invalid:{port}")  # RFC 6761: never resolves
    with CoordinatorServices(dep) as services, \
            pytest.raises(DeploymentError, match=r"--listen-address 0\.0\.0\.0"):
        services.start_proxy()
