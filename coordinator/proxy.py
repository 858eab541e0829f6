"""nginx in front of the loopback SuperLink: forwards ``/v1/fleet/*`` only.

flwr 1.41 serves Fleet, Control and Runtime APIs on one port and the OSS
Control API has no authentication, so everything except the Fleet API is 403.
Node-auth headers are forwarded but never logged (custom log_format).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from coordinator.pki import write_atomic

__all__ = ["NGINX", "nginx_config", "start_nginx", "write_nginx_config"]

NGINX = "/usr/sbin/nginx"


def nginx_config(*, prefix: Path, listen_host: str, listen_port: int, upstream_port: int,
                 server_cert: Path, server_key: Path, ca_cert: Path) -> str:
    """The whole nginx.conf text (foreground, no daemon, state under ``prefix``)."""
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
    server {{
        listen {listen_host}:{listen_port} ssl;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size 64m;
        location /v1/fleet/ {{
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
    write_atomic(conf, nginx_config(prefix=prefix, **kwargs).encode())  # type: ignore[arg-type]
    return conf


def start_nginx(conf: Path, prefix: Path, *, log_path: Path,
                executable: str = NGINX) -> subprocess.Popen[bytes]:
    """Foreground nginx in its own process group."""
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([executable, "-c", str(conf), "-p", str(prefix),
                             "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
