from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

from coordinator.pki import TlsFiles, create_pki
from coordinator.proxy import (
    BURST,
    FLOWER_ARRAY_CHUNK_BYTES,
    NGINX,
    fleet_body_limit,
    nginx_config,
    start_nginx,
    write_nginx_config,
)
from coordinator.superlink import SuperLinkPlan, superlink_command


def test_proxy_forwards_only_fleet_and_never_logs_headers(tmp_path: Path) -> None:
    conf = nginx_config(prefix=tmp_path, listen_host="0.0.0.0", listen_port=443,
                        upstream_port=9443, server_cert=tmp_path / "s.crt",
                        server_key=tmp_path / "s.key", ca_cert=tmp_path / "ca.crt")
    assert conf.count("proxy_pass ") == 1 and "location /v1/fleet/ {" in conf
    assert "location / { return 403; }" in conf
    assert "proxy_ssl_verify on;" in conf and f"client_max_body_size {6 << 20};" in conf
    log_format = conf.split("log_format", 1)[1].split(";", 1)[0]
    assert "$http_" not in log_format


def test_superlink_binds_loopback_with_tls_and_node_auth(tmp_path: Path) -> None:
    cmd = superlink_command(SuperLinkPlan(port=9443, state_dir=tmp_path, ca_cert=tmp_path / "c",
                                          server_cert=tmp_path / "s", server_key=tmp_path / "k"))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--insecure" not in cmd
    for flag in ("--enable-supernode-auth", "--disable-runtime-dependency-installation",
                 "--ssl-certfile", "--database"):
        assert flag in cmd


def test_body_limit_is_one_flower_chunk_or_the_largest_tensor_plus_slack() -> None:
    assert FLOWER_ARRAY_CHUNK_BYTES == FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE  # flwr's default
    assert fleet_body_limit() == 6 << 20
    default_trunk_largest = 512 * 2048 * 4 + 128  # float32 (512, 2048) as .npy
    assert fleet_body_limit(default_trunk_largest) == default_trunk_largest + (1 << 20)
    assert fleet_body_limit(64 << 20) == 6 << 20


def test_proxy_limits_rate_connections_and_tls(tmp_path: Path) -> None:
    conf = nginx_config(prefix=tmp_path, listen_host="0.0.0.0", listen_port=443,
                        upstream_port=9443, server_cert=tmp_path / "s.crt",
                        server_key=tmp_path / "s.key", ca_cert=tmp_path / "ca.crt")
    fleet = conf.split("location /v1/fleet/ {", 1)[1].split("}", 1)[0]
    assert "limit_req zone=fleet_req" in fleet and "limit_conn fleet_conn" in fleet
    assert "ssl_session_tickets off;" in conf
    ciphers = conf.split("ssl_ciphers ", 1)[1].split(";", 1)[0].split(":")
    assert ciphers and all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c)
                           for c in ciphers)


# ------------------------------------------------------------------ real nginx
@dataclass
class Proxy:
    port: int
    tls: TlsFiles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    """Real nginx on 127.0.0.1 with our config (upstream absent: fleet requests get 502)."""
    if not Path(NGINX).exists():
        pytest.fail(f"nginx is required at {NGINX}")
    tls = create_pki(tmp_path / "tls")
    port = _free_port()
    prefix = tmp_path / "nginx"
    conf = write_nginx_config(prefix, listen_host="127.0.0.1", listen_port=port,
                              upstream_port=_free_port(), server_cert=tls.server_cert,
                              server_key=tls.server_key, ca_cert=tls.ca_cert,
                              max_body_bytes=64 << 10)
    proc = start_nginx(conf, prefix, log_path=tmp_path / "nginx.log")
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "nginx.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not listen within 20 s"
            time.sleep(0.1)
        yield Proxy(port=port, tls=tls)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _client(tls: TlsFiles, *, ciphers: str | None = None,
            version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def _handshake(proxy: Proxy, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.integration
@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
                                   "ECDHE-ECDSA-AES128-SHA256"])
def test_cbc_sha1_suite_handshake_is_refused_by_the_running_proxy(proxy: Proxy,
                                                                   suite: str) -> None:
    ctx = _client(proxy.tls, ciphers=suite, version=ssl.TLSVersion.TLSv1_2)
    offered = [c["name"] for c in ctx.get_ciphers() if not c["name"].startswith("TLS_")]
    assert offered == [suite]  # the client offers it, and only it, under TLS 1.2
    with pytest.raises(ssl.SSLError), _handshake(proxy, ctx):
        pass


@pytest.mark.integration
@pytest.mark.parametrize(("suite", "version"), [
    ("ECDHE-ECDSA-AES128-GCM-SHA256", ssl.TLSVersion.TLSv1_2),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", ssl.TLSVersion.TLSv1_2),
    (None, ssl.TLSVersion.TLSv1_3),
])
def test_aead_suites_connect_and_tls12_gets_no_session_ticket(
        proxy: Proxy, suite: str | None, version: ssl.TLSVersion) -> None:
    with _handshake(proxy, _client(proxy.tls, ciphers=suite, version=version)) as tls:
        assert tls.version() == version.name.replace("_", ".")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = tls.recv(64)
        assert head.startswith(b"HTTP/1.1 403"), head
        if version is ssl.TLSVersion.TLSv1_2:
            assert tls.session is not None and not tls.session.has_ticket


def _fleet_post(conn: http.client.HTTPSConnection, body: bytes) -> int:
    conn.request("POST", "/v1/fleet/push-object", body=body,
                 headers={"Content-Type": "application/protobuf"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


@pytest.mark.integration
def test_oversized_fleet_request_body_is_refused_with_413(proxy: Proxy) -> None:
    ctx = _client(proxy.tls)
    conn = http.client.HTTPSConnection("localhost", proxy.port, context=ctx, timeout=10)
    try:
        assert _fleet_post(conn, bytes(65 << 10)) == 413
    finally:
        conn.close()
    conn = http.client.HTTPSConnection("localhost", proxy.port, context=ctx, timeout=10)
    try:
        assert _fleet_post(conn, bytes(1024)) == 502  # within the limit: forwarded
    finally:
        conn.close()


@pytest.mark.integration
def test_request_flood_from_one_address_is_throttled_with_429(proxy: Proxy) -> None:
    ctx = _client(proxy.tls)
    statuses: list[int] = []
    deadline = time.monotonic() + 60
    while len(statuses) < BURST * 2 and time.monotonic() < deadline:  # bounded both ways
        conn = http.client.HTTPSConnection("localhost", proxy.port, context=ctx, timeout=10)
        try:
            while len(statuses) < BURST * 2:
                statuses.append(_fleet_post(conn, b"x"))
                if statuses[-1] == 429:
                    break
        except (http.client.RemoteDisconnected, ConnectionError):
            pass  # nginx closes after a failed upstream: open the next connection
        finally:
            conn.close()
        if statuses and statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and len(statuses) > BURST // 2, statuses[-5:]
