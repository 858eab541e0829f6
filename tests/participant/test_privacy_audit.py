"""`fedadmet audit privacy` on a real small site: report files, progress, and the verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedadmet.cli.main import _mount, app
from tests.participant.site_factory import make_site


def _audit(tmp_path: Path, *extra: str) -> tuple[int, str, Path]:
    kit = make_site(tmp_path / "site", n=160, private_endpoint=None)
    out = tmp_path / "audit"
    _mount()
    res = CliRunner().invoke(app, ["audit", "privacy", "--site", str(kit.config_path),
                                   "--runs", "4", "--shadows", "2", "--output", str(out),
                                   *extra])
    return res.exit_code, res.output, out


@pytest.mark.slow  # ~90 s on a loaded 2-core machine: a 2048-256 MLP, 20+ trainings
def test_audit_privacy_writes_json_markdown_and_roc_plot(tmp_path: Path) -> None:
    code, text, out = _audit(tmp_path)
    assert code == 0, text
    result = json.loads((out / "privacy-audit.json").read_text())
    targets = result["membership_inference"]
    assert set(targets) == {"local-only (non-private)", "DP-SGD ε=8"}
    for attacks in targets.values():
        assert set(attacks) == {"loss-threshold", "lira-offline"}
        for m in attacks.values():
            assert 0.0 <= m["auc"]["lower"] <= m["auc"]["value"] <= m["auc"]["upper"] <= 1.0
    assert [c["target_epsilon"] for c in result["canary_audit"]] == [1.0, 8.0]
    assert all(c["epsilon_lower_bound"] <= c["claimed_epsilon"] for c in result["canary_audit"])
    md = (out / "privacy-audit.md").read_text()
    assert "## Privacy audit" in md and "![membership-inference ROC](privacy-audit-roc.png)" in md
    assert (out / "privacy-audit-roc.png").read_bytes()[:4] == b"\x89PNG"


def test_audit_privacy_refuses_a_missing_site_file(tmp_path: Path) -> None:
    _mount()
    res = CliRunner().invoke(app, ["audit", "privacy", "--site", str(tmp_path / "nope.toml")])
    assert res.exit_code != 0 and "nope.toml" in res.output
