"""pacsnode.inference.card: every invalid field is refused with its name and the valid choices."""

from __future__ import annotations

import copy
import json

import pytest
from onnx_models import make_card

from pacsnode.errors import ModelError
from pacsnode.inference.card import ModelCard, load_model_card


def test_valid_card_round_trips():
    d = make_card(4, 3, target_spacing=(1.0, 1.0, 1.0), patch_size=(128, 128, 128),
                  normalization=[{"scheme": "zscore", "use_nonzero_mask": True}] * 4,
                  postprocessing={"largest_component": [1]})
    card = ModelCard.from_json(json.dumps(d))
    assert card.channels == 4 and card.num_outputs == 4
    assert card.channel_names == ("T1", "T1ce", "T2", "FLAIR")
    assert card.label(3).type.value == "108369006"
    assert card.normalization[0].use_nonzero_mask is True
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert load_model_card(d) == card


def test_sigmoid_card_counts_regions():
    card = load_model_card(make_card(1, 3, activation="sigmoid"))
    assert card.num_outputs == 3


def _set(d, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if k.isdigit() else d[k]
    last = keys[-1]
    if value is _DELETE:
        del d[last]
    else:
        d[int(last) if last.isdigit() else last] = value


_DELETE = object()

CASES = [
    ("schema", "pacsnode.model_card/2", r"field schema must name the card schema, got 'pacsnode.model_card/2'; "
                                        r"valid: 'pacsnode.model_card/1'"),
    ("name", _DELETE, r"field name is required but missing; valid keys: schema, name"),
    ("colour", 1, r"field colour is not a known key, got 'colour'; valid: schema, name, version"),
    ("inputs", [], r"field inputs must be a non-empty list"),
    ("inputs.0.modality", "mr", r"field inputs\[0\].modality must be a DICOM Modality code, got 'mr'; valid: e.g. MR"),
    ("inputs.0.series_description", "(T1", r"inputs\[0\].series_description must be a valid regular expression"),
    ("target_spacing", [1, 0, 1], r"field target_spacing must hold positive numbers, got \[1, 0, 1\]; valid: three"),
    ("patch_size", [16, 16], r"field patch_size must be a list of three values, got \[16, 16\]; valid: three "
                             r"positive integers"),
    ("patch_size", [16, 16.5, 16], r"field patch_size must hold positive integers"),
    ("normalization", [], r"field normalization must be a list with one entry per input \(1\)"),
    ("normalization.0", {"scheme": "minmax"}, r"field normalization\[0\].scheme must name a normalization scheme, "
                                              r"got 'minmax'; valid: zscore, ct, rescale01, rgb01, none"),
    ("normalization.0", {"scheme": "ct", "clip": [5, 1], "mean": 0, "std": 1},
     r"normalization\[0\].clip must be \[lo, hi\] with lo < hi"),
    ("normalization.0", {"scheme": "ct", "clip": [0, 1], "mean": 0, "std": 0},
     r"normalization\[0\].std must be a positive number, got 0"),
    ("activation", "relu", r"field activation must name an output activation, got 'relu'; valid: softmax, sigmoid"),
    ("tile_step", 1.5, r"field tile_step must be a fraction of the patch, got 1.5; valid: a number in \(0, 1\]"),
    ("mirror_axes", [0, 3], r"field mirror_axes must be a list of distinct spatial axes, got \[0, 3\]; "
                            r"valid: a subset of \[0, 1, 2\]"),
    ("labels.0.value", 0, r"field labels\[0\].value must be an integer label value, got 0; valid: 1 to 255"),
    ("labels.0.color", [255, 0], r"field labels\[0\].color must be an RGB triple"),
    ("labels.0.category", {"scheme": "SCT", "value": "1"}, r"field labels\[0\].category.meaning is required"),
    ("labels.0.value", 2, r"field labels must have values 1..N in some order for a softmax model, got \[2\]"),
    ("postprocessing", {"largest_component": [7]}, r"postprocessing.largest_component must list label values of "
                                                   r"the card \(or lists of them, each kept as one union\), "
                                                   r"got \[7\]; valid: values or lists of values from \[1\]"),
    ("postprocessing", {"largest_component": [[1, 4]]}, r"postprocessing.largest_component must list label values "
                                                        r"of the card .*got \[\[1, 4\]\]"),
    ("crop_to_nonzero", "yes", r"field crop_to_nonzero must be a boolean, got 'yes'; valid: true or false"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in CASES])
def test_invalid_card_is_refused_naming_the_field(path, value, message):
    d = copy.deepcopy(make_card(1, 1))
    _set(d, path, value)
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict(d)


def test_card_must_be_json():
    with pytest.raises(ModelError, match=r"model card must be valid JSON, got a parse error"):
        ModelCard.from_json("{not json")


def test_test_metrics_read_the_test_key_and_older_cards_held_out_validation():
    figures = {"split": "held-out imagesTs (16 cases)", "dice": {"whole_tumor": 0.9}}
    for provenance, expected in (({"test": figures}, figures),
                                 ({"validation": figures}, figures),  # cards written before the "test" key
                                 ({"validation": {"split": "5-fold cross-validation", "dice": {}}}, {}),
                                 ({}, {})):
        card = load_model_card({**make_card(4, 3), "provenance": provenance})
        assert card.test_metrics == expected, provenance
