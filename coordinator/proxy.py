"""nginx in front of the loopback SuperLink: forwards ``/v1/fleet/*`` only.

flwr 1.41 serves Fleet, Control and Runtime APIs on one port and the OSS
Control API has no authentication, so everything except the Fleet API is 403.
Node-auth headers are forwarded but never logged (custom log_format).

Bounds, per member address: one request body at most :func:`fleet_body_limit` (Flower
pushes one object per request and cuts every array into 5 MiB chunks, so no honest
request is larger than one chunk or the model's largest tensor), :data:`RATE_PER_S`
requests a second with a burst of :data:`BURST`, :data:`CONNECTIONS` connections at once;
over that, 429. TLS: 1.3, or 1.2 with ECDHE and an AEAD cipher (AES-GCM, ChaCha20-Poly1305)
only; no session tickets (their key would outlive every connection's forward secrecy).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from protocols.atomic_files import PUBLIC, write_bytes

__all__ = ["NGINX", "TLS12_CIPHERS", "fleet_body_limit", "listen_target", "nginx_config",
           "start_nginx", "write_nginx_config"]

NGINX = "/usr/sbin/nginx"
# flwr 1.41's FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE default; members run with it, since
# protocols.flower_env keeps FLWR_PRIVATE_* out of their SuperNodes.
FLOWER_ARRAY_CHUNK_BYTES = 5 * 1024 * 1024
BODY_SLACK_BYTES = 1024 * 1024  # protobuf framing, object ids, message metadata
# A round moves a few dozen objects per member (one request each), plus polls.
RATE_PER_S = 20
BURST = 200
CONNECTIONS = 16
# TLS 1.2: forward-secret key exchange and AEAD only (TLS 1.3's suites all are).
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


def fleet_body_limit(largest_tensor_bytes: int | None = None) -> int:
    """The largest request body an honest member sends, plus slack, in bytes.

    One Flower chunk, or the model's largest tensor (its ``.npy`` bytes) when that is
    smaller, plus 1 MiB of framing. Without a model: 6 MiB, the bound every model with a
    tensor of a chunk or more reaches; the default 2048-512-256 trunk (largest tensor
    2048x512 float32, 4 MiB) gives 5 MiB.
    """
    chunk = FLOWER_ARRAY_CHUNK_BYTES
    if largest_tensor_bytes is not None:
        chunk = min(chunk, largest_tensor_bytes)
    return chunk + BODY_SLACK_BYTES


def listen_target(host: str, port: int) -> str:
    """nginx's ``listen`` address: ``HOST:PORT``, an IPv6 host in brackets.

    nginx binds exactly this address (a name is resolved once, at start); ``0.0.0.0`` or
    ``::`` bind every interface, which an operator has to ask for.
    """
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nginx_config(*, prefix: Path, listen_host: str, listen_port: int, upstream_port: int,
                 server_cert: Path, server_key: Path, ca_cert: Path,
                 max_body_bytes: int | None = None) -> str:
    """The whole nginx.conf text (foreground, no daemon, state under ``prefix``)."""
    body = fleet_body_limit() if max_body_bytes is None else max_body_bytes
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    # No request headers in the log: flwr-public-key/-timestamp/-signature stay out of it.
    log_format fleet '$remote_addr [$time_iso8601] "$request_method $uri" $status '
                     '$body_bytes_sent $request_time';
    access_log {prefix}/access.log fleet;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server_tokens off;
    limit_req_zone $binary_remote_addr zone=fleet_req:10m rate={RATE_PER_S}r/s;
    limit_conn_zone $binary_remote_addr zone=fleet_conn:10m;
    limit_req_status 429;
    limit_conn_status 429;
    client_header_timeout 10s;
    client_body_timeout 60s;
    server {{
        listen {listen_target(listen_host, listen_port)} ssl;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {TLS12_CIPHERS};
        ssl_prefer_server_ciphers off;
        ssl_session_tickets off;
        client_max_body_size {body};
        location /v1/fleet/ {{
            limit_req zone=fleet_req burst={BURST} nodelay;
            limit_conn fleet_conn {CONNECTIONS};
            proxy_pass https://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {ca_cert};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_pass_request_headers on;
            # Stream bodies both ways: no temp files (nginx workers, dropped to an
            # unprivileged user, cannot write this prefix: model-sized bodies got a 500).
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
        location / {{ return 403; }}
    }}
}}
"""


def write_nginx_config(prefix: Path, **kwargs: object) -> Path:
    """Write ``nginx.conf`` under ``prefix`` atomically and create nginx's temp dirs."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    write_bytes(conf, nginx_config(prefix=prefix, **kwargs).encode(),  # type: ignore[arg-type]
                mode=PUBLIC)
    return conf


def start_nginx(conf: Path, prefix: Path, *, log_path: Path,
                executable: str = NGINX) -> subprocess.Popen[bytes]:
    """Foreground nginx in its own process group."""
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([executable, "-c", str(conf), "-p", str(prefix),
                             "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
