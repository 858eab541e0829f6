from pathlib import Path

from participant.daemon import SuperNodePlan, format_node_config, supernode_command, supernode_env


def test_no_proxy_always_covers_loopback_and_keeps_https_proxy() -> None:
    env = supernode_env({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "corp.internal"})
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["NO_PROXY"].split(",") == ["corp.internal", "127.0.0.1", "localhost", "::1"]


def test_supernode_uses_tls_and_node_key(tmp_path: Path) -> None:
    cmd = supernode_command(SuperNodePlan(superlink="fl.example.org:443",
                                          root_certificates=tmp_path / "ca.crt",
                                          node_key=tmp_path / "node_key", port=9101,
                                          node_config={"state-dir": '/x "y"', "n": 2}))
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "node_key")
    assert cmd[cmd.index("--port") + 1] == "9101"
    assert format_node_config({"state-dir": '/x "y"', "n": 2}) == 'state-dir="/x \\"y\\"" n=2'
