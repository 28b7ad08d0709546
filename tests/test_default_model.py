"""The shipped default model (`builtin:brain-tumor`): present in the package, accepted by the node's
model check, a width-1/4 distilled student whose card says synthetic phantoms / not for clinical use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pacsnode.cli import main as pacsnode_main
from pacsnode.inference import Model

MODEL = Path(__file__).resolve().parents[1] / "pacsnode" / "models" / "brain-tumor.onnx"


def test_default_model_is_shipped_and_small() -> None:
    assert MODEL.is_file(), f"the default model must be shipped at {MODEL}"
    assert MODEL.stat().st_size < 8 * 2**20


def test_default_model_passes_the_node_model_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert pacsnode_main(["model", "check", "builtin:brain-tumor"]) == 0
    capsys.readouterr()


def test_default_model_card_says_synthetic_and_not_clinical() -> None:
    card = Model.load(MODEL, threads=1).card.to_dict()  # the card as the node reads it
    use = card["intended_use"]
    assert re.search(r"(?i)synthetic phantoms", use)
    assert re.search(r"(?i)not for clinical use", use)
    assert [c["name"] for c in card["inputs"]] == ["T1", "T1ce", "T2", "FLAIR"]
    assert [lab["value"] for lab in card["labels"]] == [1, 2, 3]
    prov = card["provenance"]
    assert prov["width_factor"] == 0.25
    assert "logit" in prov["kd_method"].split("+")  # a distilled student, not a plain small network
    assert prov["teacher"] and prov["dataset"] and prov["parameters"] > 0
    # held-out test figures: under "validation" in this card, written before the key was named "test"
    assert set(Model.load(MODEL, threads=1).card.test_metrics["dice"]) == {"whole_tumor", "tumor_core", "enhancing"}
    assert "held-out" in prov["validation"]["split"]


def test_default_model_loads_by_builtin_name() -> None:
    model = Model.load("builtin:brain-tumor", threads=1)
    assert model.card.name == "brain-tumor"
    assert json.loads(json.dumps(model.card.to_dict()))["activation"] == "softmax"
