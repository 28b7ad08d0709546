"""docs/model-card.md stays true: it names every field the node's card validator accepts (and no other),
its example card passes that validator, and its selector and label-code tables are distill's own."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from pacsnode.errors import ModelError
from pacsnode.inference.card import ModelCard

DOC = Path(__file__).resolve().parents[1] / "docs" / "model-card.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", TEXT, re.S)]
EXAMPLE = BLOCKS[0]


def _section(title: str) -> str:
    return re.split(r"\n#{2,3} ", TEXT.split(f"## {title}\n", 1)[1], maxsplit=1)[0]


def _table_rows(section: str) -> list[list[str]]:
    rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return rows[1:]  # without the header


def _valid_keys(card: dict, where: list, *, key: str = "zzz") -> set[str]:
    """The keys the validator accepts at ``where`` (read from its one-line refusal of an unknown key)."""
    bad = copy.deepcopy(card)
    target = bad
    for step in where:
        target = target[step]
    target[key] = 1
    with pytest.raises(ModelError) as exc:
        ModelCard.from_dict(bad)
    message = str(exc.value)
    assert "is not a known key" in message, message
    return set(message.rsplit("valid: ", 1)[1].split(", "))


def _documented_fields() -> set[str]:
    return {re.fullmatch(r"`([^`]+)`", row[0]).group(1) for row in _table_rows(_section("Fields"))}


def test_the_example_card_passes_the_node_validator() -> None:
    card = ModelCard.from_dict(EXAMPLE)
    assert card.channel_names == ("T1", "T1ce", "T2", "FLAIR")
    assert ModelCard.from_dict(card.to_dict()) == card


def test_the_fields_table_names_every_field_the_validator_accepts_and_no_other() -> None:
    ct = copy.deepcopy(EXAMPLE)
    ct["normalization"][0] = {"scheme": "ct", "clip": [-958.0, 327.0], "mean": 82.9, "std": 136.1}
    evidence = copy.deepcopy(EXAMPLE)
    evidence["validated_precisions"] = BLOCKS[2]["validated_precisions"]
    accepted = {f"{k}" for k in _valid_keys(EXAMPLE, [])}
    accepted |= {f"inputs[].{k}" for k in _valid_keys(EXAMPLE, ["inputs", 0])}
    accepted |= {f"labels[].{k}" for k in _valid_keys(EXAMPLE, ["labels", 0])}
    accepted |= {f"code.{k}" for k in _valid_keys(EXAMPLE, ["labels", 0, "type"])}
    accepted |= {f"normalization[].{k}" for k in _valid_keys(EXAMPLE, ["normalization", 0])}
    accepted |= {f"normalization[].{k}" for k in _valid_keys(ct, ["normalization", 0])}
    accepted |= {f"postprocessing.{k}" for k in _valid_keys(EXAMPLE, ["postprocessing"])}
    accepted |= {f"validated_precisions[].{k}" for k in _valid_keys(evidence, ["validated_precisions", 0])}
    assert _documented_fields() == accepted


def test_the_fragments_are_valid_where_they_belong() -> None:
    ct = copy.deepcopy(EXAMPLE)
    ct["inputs"] = [{"name": "CT", "modality": "CT", "series_description": ".*"}]
    ct["normalization"] = BLOCKS[1]["normalization"]
    assert ModelCard.from_dict(ct).normalization[0].clip == (-958.0, 327.0)
    assert ModelCard.from_dict({**EXAMPLE, **BLOCKS[2]}).validated_precisions[0].precision == "bf16"


def test_the_site_example_merges_onto_the_example_card() -> None:
    pytest.importorskip("torch")  # distillation.export needs the [train] extra
    from distillation.export import edit_card, validate_card

    merge = BLOCKS[3]
    card = validate_card(edit_card(EXAMPLE, merge=merge))
    assert [c["series_description"] for c in card["inputs"]] == [c["series_description"] for c in merge["inputs"]]
    assert card["labels"][0]["type"]["meaning"] == "Oedema" and card["labels"][0]["name"] == "Edema"
    shell = re.search(r"```sh\n(.*?)```", TEXT, re.S).group(1)
    given = dict(re.findall(r"--input-selector '([^=]+)=([^']+)'", shell))
    assert given == {c["name"]: c["series_description"] for c in merge["inputs"]}


def test_the_selector_and_label_code_tables_are_distills_own() -> None:
    pytest.importorskip("torch")
    from distillation.export.card import CHANNEL_SELECTORS, LABEL_CODES

    selectors = {row[0].strip("`").lower(): (row[1], row[2].strip("`")) for row in _table_rows(
        _section("Input selectors")) if row[0] != "any other"}
    assert selectors == CHANNEL_SELECTORS
    shown = {}
    for names, category, type_, colour in _table_rows(_section("Label codes")):
        for name in names.split(", "):
            shown[name] = (category.split()[0], type_.split()[0], [int(c) for c in colour.split(", ")])
    assert shown == {name: (c["value"], t["value"], col) for name, (c, t, col) in LABEL_CODES.items()}
