"""Test lanes. ``pytest`` runs everything (what CI runs); ``pytest -m "not slow"`` is the edit loop.

A test is slow when it is marked so in its module, when it starts real processes
(``integration``), or when it is listed below: tests over ~5 s on an idle 2-core machine whose
modules also hold fast tests. New slow tests mark themselves with ``@pytest.mark.slow``.
"""

from __future__ import annotations

import pytest

SLOW_TESTS = frozenset({
    "tests/participant/test_lazy_noise.py::test_owed_and_per_step_noise_train_models_of_the_same_distribution",
    "tests/participant/test_calibration.py::test_calibrated_sigma_never_overshoots_epsilon",
    "tests/participant/test_ledger.py::test_calibrated_noise_never_overshoots",
    "tests/fedadmet/cli/test_participant.py::test_finetune_then_predict_with_the_locally_registered_model",
    "tests/participant/test_finetune.py::test_finetuning_improves_the_local_validation_metric_over_the_global_model",
    "tests/participant/test_outgoing_message.py::test_training_time_is_logged_on_site",
    "tests/participant/test_outgoing_message.py::test_train_reply_leaks_no_smiles_or_per_example_data",
    "tests/participant/test_tracking.py::test_finetune_run_logs_and_registers_locally",
    "tests/participant/test_tracking.py::test_failed_block_ends_the_run_failed",
    "tests/simulations/test_baseline.py::test_tiny_run_is_finite_and_beats_chance",
    "tests/simulations/test_baseline.py::test_cli_writes_json",
    "tests/simulations/test_datasets.py::test_aqsoldb_reports_its_two_unparsable_rows",
    "tests/simulations/test_comparisons.py::test_four_arms_per_partner_and_local_only_beats_the_mean_predictor",
    "tests/simulations/test_report.py::test_sweep_report_draws_the_privacy_utility_curve",
    "tests/simulations/test_report.py::test_report_writes_every_file_with_valid_pngs",
    "tests/chem/test_training.py::test_learns_better_than_a_mean_predictor",
    "tests/chem/test_mlflow_model.py::test_pyfunc_round_trip_through_sqlite_store",
    "tests/coordinator/test_aggregation.py::test_blocked_float32_sum_stays_within_the_rounding_bound",
    "tests/coordinator/test_tracking.py::test_resumed_coordinator_continues_the_same_run",
    "tests/coordinator/test_tracking.py::test_a_federation_is_one_run_with_params_metrics_receipts_and_models",
    "tests/coordinator/test_tracking.py::test_resume_under_another_config_is_refused",
    "tests/protocols/test_receipt_byte_form.py::test_every_single_byte_mutant_is_rejected",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        base_id = item.nodeid.split("[", 1)[0]
        if item.get_closest_marker("integration") or base_id in SLOW_TESTS:
            item.add_marker(slow)
