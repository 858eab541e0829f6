from pathlib import Path

from coordinator.proxy import nginx_config
from coordinator.superlink import SuperLinkPlan, superlink_command


def test_proxy_forwards_only_fleet_and_never_logs_headers(tmp_path: Path) -> None:
    conf = nginx_config(prefix=tmp_path, listen_host="0.0.0.0", listen_port=443,
                        upstream_port=9443, server_cert=tmp_path / "s.crt",
                        server_key=tmp_path / "s.key", ca_cert=tmp_path / "ca.crt")
    assert conf.count("proxy_pass ") == 1 and "location /v1/fleet/ {" in conf
    assert "location / { return 403; }" in conf
    assert "proxy_ssl_verify on;" in conf and "client_max_body_size 64m;" in conf
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
