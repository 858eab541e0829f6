"""The site's training data (``participant.data``): the same loader and report as the CLI."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd
import pytest

from participant.data import load_site_data
from tests.participant.site_factory import make_site


def test_site_data_reports_rows_and_merges_duplicates_across_files(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kit = make_site(tmp_path / "site", n=60, private_endpoint=None)
    extra = pd.DataFrame({"smiles": [kit.data["smiles"][0], "not a molecule", "CCO"],
                          "measured": ["1.0", "2.0", "1e999"]})
    extra.to_csv(kit.root / "more.csv", index=False)
    cfg = kit.config
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, files=(*cfg.data.files, kit.root / "more.csv")))
    with caplog.at_level(logging.WARNING, logger="participant.data"):
        data = load_site_data(cfg, kit.featurization_spec)
    report = data.report
    assert report.rows_read == 63 and report.rejected == 1
    assert report.merged == {"solubility": 1}  # the first molecule, measured in both files
    assert data.n_train + int(data.x_valid.shape[0]) == 61  # 60 + CCO (unlabelled)
    assert "more.csv row 2: unparsable SMILES (smiles = 'not a molecule')" in caplog.text
    assert "more.csv row 3: label is not finite (measured = '1e999')" in caplog.text
    assert "1 duplicate rows merged into 61 distinct structures" in caplog.text
