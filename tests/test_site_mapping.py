"""Site mapping: a scanner's series names ("AX T1 MPRAGE") reach the model's inputs through
[models.NAME.inputs.CHANNEL] selectors in config.toml, without touching the model file.

The study is the demo's phantom written with scanner-style descriptions and real acquisition
attributes (ScanningSequence, SequenceName, ContrastBolusAgent on the post-contrast T1 only).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pacsnode.config import InputSelector, parse_settings
from pacsnode.demo.phantom import load_case, write_study
from pacsnode.demo.scenario import NodeProcess, free_port, wait_for, write_node_config
from pacsnode.errors import ConfigError, VolumeError
from pacsnode.inference import Model
from pacsnode.volume.select import input_selectors, scan_series, select_series

SCANNER = {"T1": "AX T1 MPRAGE", "T1ce": "AX T1 MPRAGE", "T2": "AX T2 SPACE", "FLAIR": "AX T2 FLAIR SPACE"}

# This site's selectors: both T1s carry the same description; contrast tells them apart.
SITE = """
[models.brain-tumor.inputs.T1]
series_description = "(?i)t1.*mprage"
contrast = "without"

[models.brain-tumor.inputs.T1ce]
series_description = "(?i)t1.*mprage"
contrast = "with"

[models.brain-tumor.inputs.T2]
series_description = "(?i)\\\\bt2\\\\b"
scanning_sequence = ["SE"]
sequence_name = "^\\\\*spc_"
"""


@pytest.fixture(scope="module")
def scanner_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_study(load_case(), tmp_path_factory.mktemp("scanner") / "study", names=SCANNER)


@pytest.fixture(scope="module")
def card_inputs():
    return Model.load("builtin:brain-tumor", threads=1, backend="onnxruntime").card.inputs


def _settings(tail: str = SITE):
    import tomllib

    doc = tomllib.loads(tail)
    doc["models"]["brain-tumor"]["file"] = "builtin:brain-tumor"
    return parse_settings({**doc, "security": {"allow_any_caller": True}})


def test_the_cards_selectors_miss_a_scanners_names(scanner_study, card_inputs) -> None:
    with pytest.raises(VolumeError, match=re.escape(
            "every model input channel needs a series, got no series for T1 (Modality MR, SeriesDescription "
            "matching '^T1$'); T1ce (Modality MR, SeriesDescription matching '(?i)^t1 ?(ce|c|gd|post)'); T2 "
            "(Modality MR, SeriesDescription matching '(?i)^t2$'); series found: AX T1 MPRAGE (MR), AX T1 MPRAGE "
            "(MR), AX T2 SPACE (MR), AX T2 FLAIR SPACE (MR)")):
        select_series(scanner_study["T1"][0].parents[1], card_inputs)


def test_site_selectors_map_every_input_to_its_series(scanner_study, card_inputs) -> None:
    settings = _settings()
    selectors = input_selectors(card_inputs, settings.models["brain-tumor"].inputs, model="brain-tumor")
    assert [(s.name, s.source) for s in selectors] == [
        ("T1", "config models.brain-tumor.inputs.T1"), ("T1ce", "config models.brain-tumor.inputs.T1ce"),
        ("T2", "config models.brain-tumor.inputs.T2"), ("FLAIR", "model card")]
    chosen = select_series(scanner_study["T1"][0].parents[1], selectors)
    found = {s.series_instance_uid: s for s in scan_series(scanner_study["T1"][0].parents[1])}
    for channel, files in scanner_study.items():
        assert chosen[channel].files == tuple(files), channel
        assert chosen[channel].series_instance_uid in found
    assert chosen["T1ce"].contrast_agent == "GADOLINIUM" and chosen["T1"].contrast_agent == ""


def test_why_a_series_is_not_an_input(scanner_study, card_inputs) -> None:
    selectors = {s.name: s for s in input_selectors(card_inputs, _settings().models["brain-tumor"].inputs)}
    series = {s.series_number: s for s in scan_series(scanner_study["T1"][0].parents[1])}
    assert selectors["T1"].rejects(series[2]) == [
        "ContrastBolusAgent is 'GADOLINIUM' (a series without contrast is wanted)"]
    assert selectors["T1ce"].rejects(series[1]) == ["ContrastBolusAgent is absent (a contrast series is wanted)"]
    assert selectors["T2"].rejects(series[4]) == ["SequenceName '*spcir_278ns' does not match '^\\\\*spc_'"]
    assert selectors["T2"].rejects(series[1]) == [
        "SeriesDescription 'AX T1 MPRAGE' does not match '(?i)\\\\bt2\\\\b'",
        "SequenceName '*tfl3d1' does not match '^\\\\*spc_'", "ScanningSequence GR\\IR lacks SE"]


def test_a_selector_naming_no_input_and_an_empty_selector_are_refused(card_inputs) -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "models.brain-tumor.inputs.T1c must name an input of the model, got 'T1c'; valid: T1, T1ce, T2, FLAIR")):
        input_selectors(card_inputs, {"T1c": InputSelector(series_description="x")}, model="brain-tumor")
    with pytest.raises(ConfigError, match=re.escape(
            "models.brain-tumor.inputs.T1 must set at least one of series_description, protocol_name, "
            "sequence_name, scanning_sequence, sequence_variant, image_type, contrast, got none")):
        _settings("[models.brain-tumor.inputs.T1]\nmodality = \"MR\"\n")
    with pytest.raises(ConfigError, match=re.escape(
            "models.brain-tumor.inputs.T1.contrast must be one of 'any', 'with', 'without', got 'yes'")):
        _settings("[models.brain-tumor.inputs.T1]\ncontrast = \"yes\"\n")


def _route_test(config: Path, study: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsnode", "route", "test", str(study), "--config", str(config)],
                          capture_output=True, text=True, timeout=300)


def test_route_test_shows_the_route_and_each_inputs_series_or_why_not(tmp_path: Path, scanner_study) -> None:
    study = scanner_study["T1"][0].parents[1]
    plain = write_node_config(tmp_path / "plain.toml", state_dir=tmp_path / "state", port=free_port(),
                              model_file="builtin:brain-tumor", destination=("PACS", "127.0.0.1", 104))
    r = _route_test(plain, study)
    assert r.returncode == 1, r.stderr
    assert "    brain-tumor-mr: matches #1, #2, #3, #4  ← taken" in r.stdout
    assert "    T1       no series  [model card: Modality MR, SeriesDescription matching '^T1$']" in r.stdout
    assert "      #1 'AX T1 MPRAGE': SeriesDescription 'AX T1 MPRAGE' does not match '^T1$'" in r.stdout
    assert "    FLAIR    ← #4 'AX T2 FLAIR SPACE'" in r.stdout
    assert "  → the job would fail: a model input has no series" in r.stdout

    site = tmp_path / "site.toml"
    site.write_text(plain.read_text() + SITE)
    ok = _route_test(site, study)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ("    T1ce     ← #2 'AX T1 MPRAGE'  [config models.brain-tumor.inputs.T1ce: Modality MR, SeriesDescription "
            "matching '(?i)t1.*mprage', ContrastBolusAgent present]") in ok.stdout
    assert "  → would run brain-tumor (seg, sr) and send to pacs (route brain-tumor-mr)" in ok.stdout

    ct = tmp_path / "ct.toml"
    ct.write_text(site.read_text().replace('modality = ["MR"]', 'modality = ["CT"]'))
    ignored = _route_test(ct, study)
    assert ignored.returncode == 1
    assert "      #1: Modality MR is not one of CT" in ignored.stdout
    assert "  → ignored: no route matches" in ignored.stdout


@pytest.mark.network
@pytest.mark.slow
def test_the_node_runs_a_scanner_named_study_through_site_selectors(tmp_path: Path, scanner_study) -> None:
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", state_dir=tmp_path / "state", port=port,
                               model_file="builtin:brain-tumor", destination=None, stable_seconds=1.0,
                               outputs=("nifti",))
    config.write_text(config.read_text() + SITE)
    files = [str(f) for series in scanner_study.values() for f in series]
    with NodeProcess(config, port, log_path=tmp_path / "node.log"):
        subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "PACSNODE", "127.0.0.1", str(port),
                        *files], check=True, env={"TCP_NODELAY": "1"}, capture_output=True)

        def done() -> list[dict]:
            out = subprocess.run([sys.executable, "-m", "pacsnode", "jobs", "--config", str(config), "--json"],
                                 capture_output=True, text=True, check=True)
            jobs = json.loads(out.stdout)
            assert not [j for j in jobs if j["state"] == "failed"], jobs
            return [j for j in jobs if j["state"] == "done"]

        job = wait_for(done, 300, "the job to finish")[0]
    run = json.loads((tmp_path / "state" / "results" / str(job["id"]) / "run.json").read_text())
    uids = {s.series_description + (" +C" if s.contrast_agent else ""): s.series_instance_uid
            for s in scan_series(scanner_study["T1"][0].parents[1])}
    assert run["channels"] == {"T1": uids["AX T1 MPRAGE"], "T1ce": uids["AX T1 MPRAGE +C"],
                               "T2": uids["AX T2 SPACE"], "FLAIR": uids["AX T2 FLAIR SPACE"]}
