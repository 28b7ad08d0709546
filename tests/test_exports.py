"""Each stage declares what it exports; this test keeps the public surface deliberate.

Adding a public name to a stage is a decision: update the list here in the same change.
"""

from __future__ import annotations

import importlib

import pytest

EXPORTS = {
    "pacsnode.errors": {"PacsnodeError", "ConfigError", "ReceiveError", "LedgerError", "VolumeError",
                        "ModelError", "InferenceError", "ResultsError", "DeliveryError"},
    "pacsnode.states": {"SeriesState", "JobState", "DeliveryState", "DestinationState"},
    "pacsnode.volume": {"Volume", "read_series", "list_dicom_files", "SliceGeometry", "check_frames",
                        "resample_to_reference", "SeriesInfo", "scan_series", "select_series"},
    "pacsnode.inference": {"ModelCard", "load_model_card", "Model", "Prediction", "run", "Preprocessed",
                           "PreprocessingPlan", "preprocess"},
    "pacsnode.results": {"CardLabel", "CodeValue", "ResultCard", "SegType", "result_card",
                         "seg_series_description", "segment_numbers", "segment_volumes_ml",
                         "voxel_volume_ml", "write_seg", "write_sr"},
    "pacsnode.delivery": {"MAX_CONTEXTS", "StoreOutcome", "backoff_seconds", "dead_letter_reason", "down_reason",
                          "echo_destination", "held_reason", "is_delivery_due", "is_past_horizon",
                          "next_attempt_at", "send_datasets", "tls_context"},
    "pacsnode.cluster": {"ClusterUnavailable", "open_cluster"},
    "pacsnode.processor": {"Processor", "RUN_SUMMARY", "RunSummary", "result_uids"},
    "pacsnode.dispatcher": {"DELIVERY_HANDLER", "PROBE_HANDLER", "Dispatcher"},
    "pacsnode.routing": {"UnitRoute", "match_route", "matches", "mismatches", "route_unit"},
    "pacsnode.receive": {"Receiver", "StorageSCP", "Spool", "TRANSFER_SYNTAXES", "safe_component",
                         "storage_contexts"},
    "pacsnode.ops": {"Metrics", "NodeFacts", "StatusServer", "count_job_failures", "degraded_reasons", "readiness",
                     "retention_sweep", "sd_notify", "status_families", "status_page", "status_snapshot",
                     "watchdog_interval"},
}


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_stage_exports_are_deliberate(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == EXPORTS[module]
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == [], f"{module}.__all__ names what it does not define: {missing}"


def test_every_error_is_a_pacsnode_error() -> None:
    errors = importlib.import_module("pacsnode.errors")
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.PacsnodeError)
