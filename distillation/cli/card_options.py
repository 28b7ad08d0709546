"""The options that set a model card's site-specific fields at export (docs/model-card.md), shared
by ``distill export`` and ``distill import-nnunet``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

__all__ = ["add_card_options", "apply_card_options"]


def add_card_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model card (docs/model-card.md; applied in this order, then validated)")
    g.add_argument("--merge-card", metavar="FILE.json",
                   help="a partial card merged onto the card: objects key by key, inputs matched by name, "
                        "labels by value, other values replaced")
    g.add_argument("--input-selector", action="append", default=[], metavar="NAME=REGEX",
                   help="the SeriesDescription regular expression that selects input channel NAME's series, "
                        "e.g. 'T1=(?i)(^t1$|mprage)'; repeat per channel")
    g.add_argument("--label-code", action="append", default=[], metavar="LABEL=SCHEME:VALUE:MEANING",
                   help="the segmented property type code of a label (by value or name), e.g. "
                        "'Edema=SCT:79654002:Edema'; repeat per label")
    g.add_argument("--label-category", action="append", default=[], metavar="LABEL=SCHEME:VALUE:MEANING",
                   help="the segmented property category code of a label, e.g. "
                        "'1=SCT:49755003:Morphologically Altered Structure'; repeat per label")


def apply_card_options(card: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``card`` with the options' edits (not yet validated)."""
    from distillation.export.card_edits import edit_card, read_card_patch

    merge = read_card_patch(args.merge_card) if args.merge_card else None
    return edit_card(card, merge=merge, selectors=args.input_selector, label_codes=args.label_code,
                     label_categories=args.label_category)
