"""The report: every file is written, PNGs are real images, wording is honest."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from simulations.report import summarise, write_report, write_sweep_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _rows(seed: int, arms: dict[str, float], partner: int, endpoint: str, metric: str
          ) -> list[dict[str, Any]]:
    return [{"partner": partner, "endpoint": endpoint, "metric": metric, "arm": arm,
             "value": value + 0.01 * seed, "n_test": 40} for arm, value in arms.items()]


def _results(epsilon: Any = 8.0, fed_shift: float = 0.0) -> dict[str, Any]:
    seeds = []
    for seed in (0, 1):
        comparisons = (
            _rows(seed, {"local-only": 0.90, "federated": 0.80 + fed_shift,
                         "federated+finetune": 0.70, "pooled": 0.60,
                         "mean-predictor": 1.10}, 0, "lipophilicity", "mae")
            # partner 1: fine-tune is worse than local-only -> the report must say so
            + _rows(seed, {"local-only": 0.75, "federated": 0.70, "federated+finetune": 0.72,
                           "pooled": 0.85, "mean-predictor": 0.5}, 1, "bbb", "auroc")
            # partner 1 lipophilicity: no gap between local-only and pooled
            + _rows(seed, {"local-only": 0.80, "federated": 0.79, "federated+finetune": 0.78,
                           "pooled": 0.80, "mean-predictor": 1.0}, 1, "lipophilicity", "mae"))
        rounds = [{"round": r, "evaluate": {"lipophilicity_mae": 1.0 / r, "bbb_auroc": 0.5 + r / 10,
                                            "loss": 1.0}, "seconds": 1.5 + r}
                  for r in (1, 2, 3)]
        seeds.append({"seed": seed, "rounds": rounds, "seconds": 12.0,
                      "comparisons": comparisons, "epsilon": {"ab" * 20: 7.9, "cd" * 20: 7.8},
                      "receipt_chain_head": "f" * 64, "receipts_dir": "/tmp/r",
                      "config_digest": "e" * 64})
    return {"scenario": {"name": "synthetic", "seeds": [0, 1], "epsilon": epsilon,
                         "delta": 1e-5, "rounds": 3, "partners": 2},
            "scenario_digest": "a" * 64, "seeds": seeds, "seconds": 30.0}


def test_gap_closed_sign_and_flags_in_summary() -> None:
    rows = {(r["partner"], r["endpoint"]): r for r in summarise(_results())}
    lipo = rows[(0, "lipophilicity")]
    assert math.isclose(lipo["gap_closed"][0], 2 / 3)  # (0.70-0.90)/(0.60-0.90)
    assert math.isclose(lipo["gap_closed_federated"][0], 1 / 3)
    assert lipo["finetune_beats_local_all_seeds"] and not lipo["gap_too_small"]
    bbb = rows[(1, "bbb")]
    assert math.isclose(bbb["gap_closed"][0], -0.3)  # AUROC: higher is better
    assert not bbb["finetune_beats_local_all_seeds"]
    assert rows[(1, "lipophilicity")]["gap_too_small"]


def test_report_writes_every_file_with_valid_pngs(tmp_path: Path) -> None:
    files = write_report(_results(), tmp_path)
    for key in ("results", "md", "html", "learning_curves", "partners"):
        assert files[key].exists(), key
    for png in ("learning_curves", "partners"):
        width, height = _png_size(files[png])
        assert width > 100 and height > 100
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["scenario_digest"] == "a" * 64 and len(data["summary"]) == 3
    nan_row = next(r for r in data["summary"] if r["gap_too_small"])
    assert nan_row["gap_closed"] == [None, None]  # strict JSON: NaN written as null
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "<table" in html


def test_report_says_where_finetune_loses(tmp_path: Path) -> None:
    write_report(_results(), tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "did **not** beat local-only in every seed for: partner 1 bbb" in md
    assert "n/a" in md and "partner 1 lipophilicity" in md
    assert "0.705 ± 0.005" in md  # mean ± std across seeds
    assert "s per round" in md
    assert "![learning_curves](learning_curves.png)" in md


def test_report_without_arms_makes_no_claims_about_them(tmp_path: Path) -> None:
    results = _results()
    for seed in results["seeds"]:
        seed["comparisons"] = []  # a compare = false scenario such as scale-50
    files = write_report(results, tmp_path)
    md = files["md"].read_text(encoding="utf-8")
    assert "No comparison arms were run" in md
    assert "beat local-only" not in md and "| partner |" not in md
    assert "s per round" in md and "ε=7.90" in md
    assert "<table" not in files["html"].read_text(encoding="utf-8")


def test_sweep_report_draws_the_privacy_utility_curve(tmp_path: Path) -> None:
    runs = [_results(epsilon=e, fed_shift=s)
            for e, s in ((1.0, 0.08), ("inf", -0.05), (8.0, 0.0), (3.0, 0.04))]
    files = write_sweep_report(runs, tmp_path)
    width, _ = _png_size(files["privacy_utility"])
    assert width > 100
    for label in ("1", "3", "8", "inf"):
        assert (tmp_path / f"eps-{label}" / "report.md").exists()
    md = files["md"].read_text(encoding="utf-8")
    lines = [line for line in md.splitlines() if line.startswith("| lipophilicity")]
    # sorted by ε, inf last; federated MAE at ε=1, mean over partners: (0.885 + 0.795) / 2
    assert [line.split("|")[3].strip() for line in lines] == ["1", "3", "8", "inf"]
    assert lines[0].split("|")[4].strip() == "0.840"


def test_mean_gap_is_over_consortium_endpoints_only(tmp_path: Path) -> None:
    results = _results()
    results["scenario"]["endpoints"] = [
        {"name": "lipophilicity", "private_to": None}, {"name": "bbb", "private_to": None},
        {"name": "clintox", "private_to": 0}]
    for seed_run in results["seeds"]:
        # a private endpoint: its "pooled" arm is one holder's data; a wild gap here
        # must not move the consortium figure of merit
        seed_run["comparisons"] += _rows(0, {"local-only": 0.70, "federated": 0.20,
                                             "federated+finetune": 0.20, "pooled": 0.72,
                                             "mean-predictor": 0.5}, 0, "clintox", "auroc")
    write_report(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    # lipophilicity p0: 2/3; bbb p1: -0.3; lipophilicity p1: no gap (excluded); the
    # gap of seed means equals the per-seed one here (every arm shifts alike)
    assert math.isclose(saved["mean_gap_closed"], (2 / 3 - 0.3) / 2)
    assert math.isclose(saved["mean_gap_closed_per_seed"], (2 / 3 - 0.3) / 2)
    assert saved["finetune_beats_local"] == {"cells": 3, "wins": 2, "wins_on_seed_means": 2}
    assert "2 of 3 consortium cells" in (tmp_path / "report.md").read_text()


def test_gap_of_seed_means_is_robust_to_one_noisy_seed() -> None:
    results = _results()
    # seed 1: pooled beats local-only by a hair, so that seed's ratio explodes
    for row in results["seeds"][1]["comparisons"]:
        if row["partner"] == 0 and row["arm"] == "pooled":
            row["value"] = 0.895
    row0 = next(r for r in summarise(results) if r["partner"] == 0)
    assert max(row0["gap_closed"]) > 10  # (0.71-0.91)/(0.895-0.91)
    # seed means: local 0.905, fine-tune 0.705, pooled 0.7475
    assert math.isclose(row0["gap_closed_of_means"], 0.2 / 0.1575)


def test_report_lists_every_sources_rows_and_each_partners(tmp_path: Path) -> None:
    results = _results()
    invalid = [{"file": "assays.csv", "row": 7, "column": "logS", "value": "inf",
                "reason": "label is not finite"}]
    results["seeds"][0]["data"] = {
        "endpoints": {"lipophilicity": {
            "source": "/data/assays.csv", "held_by": "all partners", "files": [],
            "rows_read": 120, "standardised": 117, "rejected": 3,
            "reasons": {"unparsable SMILES": 3, "label is not finite": 1},
            "structures": 110, "duplicates_merged": {"lipophilicity": 7},
            "invalid_rows": invalid, "invalid_rows_not_shown": 3}},
        "partners": [{"partner": 0, "train_csv": "t.csv", "rows_read": 50,
                      "standardised": 50, "rejected": 0, "duplicates_merged": {},
                      "counts": {"lipophilicity": {"train": 50, "test": 12}}}]}
    write_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Input data" in md
    assert "| lipophilicity | assays.csv | all partners | 120 | 117 | 3 | 1 | 7 | 110 |" in md
    assert "- assays.csv row 7: label is not finite (logS = 'inf')" in md
    assert "- ... and 3 more (all counted above)" in md
    assert "| 0 | 0 | 50 | 50 | 0 | 0 | lipophilicity 50 / 12 |" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"][0]["data"]["endpoints"]["lipophilicity"]["rejected"] == 3


# ---------------------------------------------------------------- figures of merit (issue 17, 5)
def test_aggregate_share_wins_and_median_are_reported(tmp_path: Path) -> None:
    write_report(_results(), tmp_path)
    fom = json.loads((tmp_path / "results.json").read_text())["figures_of_merit"]
    ft, fed = fom["federated+finetune"], fom["federated"]
    # seed means: P0 lipo gains 0.2 of 0.3; P1 bbb loses 0.03 of 0.1; P1 lipo gains 0.02 of 0
    assert math.isclose(ft["aggregate"], (0.2 - 0.03 + 0.02) / 0.4)
    assert math.isclose(fed["aggregate"], (0.1 - 0.05 + 0.01) / 0.4)
    assert (ft["wins"], ft["cells"], ft["beats_mean_predictor"]) == (2, 3, 3)
    # the P1 lipophilicity ratio is undefined (no gap): median over the other two
    assert math.isclose(ft["median"], (2 / 3 - 0.3) / 2) and ft["ratios_defined"] == 2
    assert fom["cells"] == "consortium" and "final round" in fom["reported_model"]
    md = (tmp_path / "report.md").read_text()
    assert "| federated + fine-tune | **0.48** | 2 of 3 | 3 of 3 | 0.18 |" in md
    assert "final round's global model" in md
    assert "<td>**0.48**</td>" in (tmp_path / "report.html").read_text()


def test_one_seed_prints_no_spread(tmp_path: Path) -> None:
    results = _results()
    results["seeds"] = results["seeds"][:1]
    results["scenario"]["seeds"] = [0]
    write_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "± 0.000" not in md and "| 0.900 | 0.800 | 0.700 | 0.600 |" in md
    write_report(_results(), tmp_path)
    assert "0.905 ± 0.005" in (tmp_path / "report.md").read_text()


def test_an_all_private_consortium_is_judged_on_its_private_cells(tmp_path: Path) -> None:
    results = _results()
    results["scenario"]["endpoints"] = [
        {"name": "lipophilicity", "private_to": 0}, {"name": "bbb", "private_to": 1}]
    write_report(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["finetune_beats_local"]["cells"] == 0
    fom = saved["figures_of_merit"]
    assert fom["cells"] == "private" and fom["federated+finetune"]["cells"] == 3
    md = (tmp_path / "report.md").read_text()
    assert "over the private cells" in md and "consortium cells on seed means" not in md
