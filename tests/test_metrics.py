"""/metrics through prometheus-client: exact integers, every state at zero, failures by stage and
cause, a histogram of stage durations, build / model / process info, and `promtool check metrics`
(Prometheus's own linter) clean."""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pacsnode.errors import ModelError, ResultsError, VolumeError
from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes
from pacsnode.ops import Metrics, NodeFacts, count_job_failures, status_families, status_snapshot
from pacsnode.ops.metrics import FAILURE_CAUSES, STAGE_BUCKETS
from pacsnode.states import DeliveryState, DestinationState, JobState, SeriesState

SHIPPED = Path(__file__).resolve().parents[1] / "pacsnode" / "models" / "brain-tumor.onnx"


def _sample(text: str, name: str) -> str:
    """The value written for one sample line (``name`` with its labels)."""
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return line[len(name) + 1:]


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run scripts/setup.sh (make test does), which installs apt's prometheus")
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def _failure_state(tmp_path: Path) -> Ledger:
    """A ledger with a failed job, a dead-lettered delivery and a destination down."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_instance(
        InstanceRecord(sop_instance_uid="1.2.3.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", series_uid="1.2.3.9",
                       study_uid="1.2.3", path=tmp_path / "i.dcm", size=1, transfer_syntax="1.2.840.10008.1.2.1"),
        SeriesAttributes(modality="MR", series_description="T1"), unit_uid="1.2.3", unit_kind="study")
    ledger.complete_unit("1.2.3")
    job = ledger.queue_job("1.2.3", route="brain", model_name="brain", model_sha256="0" * 64)
    ledger.start_job(job.id)
    ledger.finish_job(job.id, [str(tmp_path / "seg.dcm")])
    delivery = ledger.add_delivery(job.id, "pacs", tmp_path / "seg.dcm")
    ledger.mark_delivery_failed(delivery.id, "past delivery.horizon_hours")
    ledger.mark_destination("pacs", DestinationState.DOWN, error="connection refused")
    job2 = ledger.queue_job("1.2.3", route="brain", model_name="other", model_sha256="1" * 64)
    ledger.start_job(job2.id)
    ledger.fail_job(job2.id, "VolumeError: slices must be equally spaced")
    return ledger


def test_counters_are_exact_integers_and_every_family_is_typed_once() -> None:
    m = Metrics()
    m.inc("instances_received_total", 1234567)
    m.inc("bytes_received_total", 2**40 + 1)
    text = m.render()
    assert _sample(text, "pacsnode_instances_received_total") == "1234567", "not 1.23457e+06"
    assert _sample(text, "pacsnode_bytes_received_total") == str(2**40 + 1)
    assert _sample(text, "pacsnode_instances_duplicate_total") == "0", "known counters are present at zero"
    helps = re.findall(r"^# HELP (\S+) ", text, re.M)
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(helps) == len(set(helps)) and len(types) == len(set(types)) and set(helps) == set(types)
    assert "# TYPE pacsnode_instances_received_total counter" in text
    # process and Python metrics, and the build
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "python_gc_collections_total"):
        assert re.search(rf"^{name}(\{{[^}}]*\}})? \d", text, re.M), name
    assert re.search(r'^pacsnode_build_info\{python="3\.\d+\.\d+",version="0\.1\.0"\} 1$', text, re.M)


def test_each_node_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.inc("instances_received_total", 5)
    assert _sample(b.render(), "pacsnode_instances_received_total") == "0"
    assert _sample(a.render(), "pacsnode_instances_received_total") == "5"


def test_stage_durations_are_a_histogram_with_every_stage_present() -> None:
    m = Metrics()
    m.observe("receive", 0.003)
    m.observe("receive", 0.2)
    m.observe("inference", 700.0)  # past the last bucket: only +Inf
    text = m.render()
    assert "# TYPE pacsnode_stage_seconds histogram" in text
    assert _sample(text, 'pacsnode_stage_seconds_bucket{le="0.0025",stage="receive"}') == "0"
    assert _sample(text, 'pacsnode_stage_seconds_bucket{le="0.005",stage="receive"}') == "1"
    assert _sample(text, 'pacsnode_stage_seconds_bucket{le="0.25",stage="receive"}') == "2"
    assert _sample(text, 'pacsnode_stage_seconds_bucket{le="+Inf",stage="receive"}') == "2"
    assert _sample(text, 'pacsnode_stage_seconds_count{stage="receive"}') == "2"
    assert float(_sample(text, 'pacsnode_stage_seconds_sum{stage="receive"}')) == pytest.approx(0.203)
    assert _sample(text, f'pacsnode_stage_seconds_bucket{{le="{STAGE_BUCKETS[-1]!r}",stage="inference"}}') == "0"
    assert _sample(text, 'pacsnode_stage_seconds_bucket{le="+Inf",stage="inference"}') == "1"
    for stage in ("route", "results", "delivery"):  # not run yet: present at zero
        assert _sample(text, f'pacsnode_stage_seconds_count{{stage="{stage}"}}') == "0"
    assert m.snapshot()["timings"] == {"receive": {"count": 2, "sum": pytest.approx(0.203)},
                                       "inference": {"count": 1, "sum": 700.0}}


def test_failures_by_stage_and_cause() -> None:
    m = Metrics()
    m.inc("artim_expired_total", 2)  # the receive stage's own counters count as failures too
    m.inc("instances_failed_total")
    m.inc("deliveries_dead_lettered_total")

    def work(job: object) -> list[str]:
        raise job  # type: ignore[misc]

    counted = count_job_failures(work, m)
    no_space = OSError(errno.ENOSPC, "No space left on device")
    wrapped = ResultsError("SEG could not be written")
    wrapped.__cause__ = no_space
    for exc in (VolumeError("slices must be equally spaced"), VolumeError("x"), ModelError("bad card"),
                wrapped, RuntimeError("boom")):
        with pytest.raises(type(exc)):
            counted(exc)
    text = m.render()

    def failures(stage: str, cause: str) -> str:
        return _sample(text, f'pacsnode_failures_total{{cause="{cause}",stage="{stage}"}}')

    assert failures("receive", "artim_expired") == "2"
    assert failures("receive", "instance_refused") == "1"
    assert failures("delivery", "dead_lettered") == "1"
    assert failures("job", "volume") == "2"
    assert failures("job", "model") == "1"
    assert failures("job", "no_space") == "1", "ENOSPC anywhere in the chain is no_space"
    assert failures("job", "other") == "1"
    assert failures("job", "inference") == "0" and failures("delivery", "unreachable") == "0"
    assert text.count("# TYPE pacsnode_failures_total counter") == 1
    present = set(re.findall(r'^pacsnode_failures_total\{cause="(\w+)",stage="(\w+)"\}', text, re.M))
    assert {(s, c) for c, s in present} == set(FAILURE_CAUSES), "every stage and cause present, at zero if need be"


def test_status_families_from_a_ledger_in_a_failure_state_pass_promtool(tmp_path: Path) -> None:
    ledger = _failure_state(tmp_path)
    try:
        facts = NodeFacts(state_dir=tmp_path, min_free_disk_mb=1,
                          models={"brain": str(SHIPPED), "gone": str(tmp_path / "missing.onnx")},
                          peers={"pacs": "ORTHANC@127.0.0.1:4242"})
        snap = status_snapshot(ledger, facts=facts)
        m = Metrics()
        m.inc("instances_received_total", 1234567)
        m.observe("inference", 3.5)
        text = m.render(status_families(snap))
    finally:
        ledger.close()
    check = _promtool(text)
    assert check.returncode == 0 and check.stdout == "" and check.stderr == "", check.stdout + check.stderr
    assert _sample(text, 'pacsnode_destination_up{destination="pacs"}') == "0"
    assert _sample(text, "pacsnode_degraded") == "1"
    for state in SeriesState:  # every state present, zero or not
        assert re.search(rf'^pacsnode_units\{{state="{state.value}"\}} \d+$', text, re.M), state
    assert _sample(text, 'pacsnode_jobs{state="failed"}') == "1"
    assert _sample(text, 'pacsnode_jobs{state="retry"}') == "0"
    assert _sample(text, 'pacsnode_deliveries{state="failed"}') == "1"
    assert {s.value for s in JobState} <= set(re.findall(r'^pacsnode_jobs\{state="(\w+)"\}', text, re.M))
    assert {s.value for s in DeliveryState} == set(re.findall(r'^pacsnode_deliveries\{state="(\w+)"\}', text, re.M))
    sha = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert _sample(text, f'pacsnode_model_info{{loaded="1",model="brain",name="brain-tumor",sha256="{sha}",'
                         f'version="0.1.0"}}') == "1"
    assert _sample(text, 'pacsnode_model_info{loaded="0",model="gone",name="",sha256="",version=""}') == "1"
    assert int(_sample(text, "pacsnode_free_disk_bytes")) == snap["disk"]["free_bytes"] > 0
    assert int(_sample(text, "pacsnode_min_free_disk_bytes")) == 2**20
    assert not re.search(r"^[^#].* -?\d+\.\d+e[+-]\d+$", "\n".join(
        ln for ln in text.splitlines() if ln.startswith("pacsnode_"))), "no pacsnode sample in e-notation"


def test_promtool_itself_rejects_what_the_old_renderer_wrote() -> None:
    """The linter the test relies on does fail: a gauge without HELP and a TYPE line repeated."""
    old = ("# TYPE pacsnode_units gauge\npacsnode_units{state=\"done\"} 1\n"
           "# TYPE pacsnode_units gauge\npacsnode_units{state=\"failed\"} 0\n")
    check = _promtool(old)
    assert check.returncode != 0
