"""`pacsnode route test SERIES_DIR...`: which route and which series per input a study would get.

Reads only headers, starts nothing: groups the files into units as the node would
(``series.group_by``), tries the routes in order and says for each why it does or does not
match, then runs the chosen model's input selectors (the card's, or this site's from
``[models.NAME.inputs]``) and says for each input which series it takes, or why each series
is not it. Exit 0 when every unit would run its model, 1 when one would be ignored or its
job would fail for want of a series, 2 for a bad config or model.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pacsnode.config import Settings, load_settings
from pacsnode.ledger import SeriesAttributes
from pacsnode.routing import mismatches, route_unit
from pacsnode.volume.select import SeriesInfo, SeriesSelector, input_selectors, scan_series

__all__ = ["register", "explain_unit"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="test routes and input selectors on series from disk")
    rsub = p.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    t = rsub.add_parser("test", help="show which route and which series per model input a study would get, "
                                     "and why not (exit 1 when it would be ignored or fail)")
    t.add_argument("series", nargs="+", metavar="SERIES_DIR", help="series folders, or one study folder")
    t.add_argument("--config", default="config.toml", help="config file (default ./config.toml)")
    t.set_defaults(func=_test)


def _attributes(s: SeriesInfo) -> SeriesAttributes:
    return SeriesAttributes(modality=s.modality, series_description=s.series_description, body_part=s.body_part,
                            image_type=s.image_type, sop_class_uid=s.sop_class_uid,
                            series_number=s.series_number)


def _units(settings: Settings, found: list[SeriesInfo]) -> list[tuple[str, list[SeriesInfo]]]:
    if settings.series.group_by == "series":
        return [(f"series {s.label}", [s]) for s in found]
    studies: dict[str, list[SeriesInfo]] = {}
    for s in found:
        studies.setdefault(s.study_instance_uid, []).append(s)
    return [(f"study {uid or '(no StudyInstanceUID)'}", members) for uid, members in studies.items()]


def _describe_series(s: SeriesInfo) -> str:
    sequence = "\\".join(s.scanning_sequence) or "-"
    text = (f"#{s.series_number:<3} {s.series_description or '(no description)'!r:<28} {s.modality:<3} "
            f"{len(s.files):>4} files, protocol {s.protocol_name or '-'!r}, sequence {sequence} "
            f"{s.sequence_name}").rstrip()
    return text + (f", contrast {s.contrast_agent}" if s.contrast_agent else "")


def explain_unit(settings: Settings, members: Sequence[SeriesInfo], selectors_of) -> tuple[list[str], bool]:
    """Lines explaining one unit's route and inputs, and whether its job would run."""
    lines = ["  series"]
    lines += [f"    {_describe_series(s)}" for s in members]
    lines.append("  routes (in order; the first a series matches wins)")
    pairs = [(s.series_instance_uid, _attributes(s)) for s in members]
    chosen = route_unit(pairs, settings.routes)
    for route in settings.routes:
        hits = [s for s in members if not mismatches(route.match, _attributes(s))]
        if hits:
            mark = "← taken" if chosen is not None and chosen.route.name == route.name else "(an earlier route won)"
            lines.append(f"    {route.name}: matches " + ", ".join(f"#{s.series_number}" for s in hits) + f"  {mark}")
        else:
            lines.append(f"    {route.name}: no series matches")
            for s in members:
                lines.append(f"      #{s.series_number}: " + "; ".join(mismatches(route.match, _attributes(s))))
    if not settings.routes:
        lines.append("    (no [[routes]] in the config)")
    if chosen is None:
        lines.append("  → ignored: no route matches")
        return lines, False
    route = chosen.route
    selectors: list[SeriesSelector] = selectors_of(route.model)
    lines.append(f"  model {route.model}: inputs")
    ok = True
    for sel in selectors:
        hits = [s for s in members if not sel.rejects(s)]
        if hits:
            best = max(hits, key=lambda s: (s.series_number, len(s.files)))
            others = f" (of {len(hits)} matching: the highest SeriesNumber)" if len(hits) > 1 else ""
            lines.append(f"    {sel.name:<8} ← #{best.series_number} {best.series_description!r}{others}  "
                         f"[{sel.source}: {sel.describe()}]")
        else:
            ok = False
            lines.append(f"    {sel.name:<8} no series  [{sel.source}: {sel.describe()}]")
            for s in members:
                lines.append(f"      #{s.series_number} {s.series_description!r}: " + "; ".join(sel.rejects(s)))
    if ok:
        lines.append(f"  → would run {route.model} ({', '.join(route.outputs)}) and send to "
                     f"{', '.join(route.destinations) or 'nowhere'} (route {route.name})")
    else:
        lines.append(f"  → the job would fail: a model input has no series (set [models.{route.model}.inputs.NAME] "
                     f"selectors in the config; docs/connect.md)")
    return lines, ok


def _test(args: argparse.Namespace) -> int:
    from pacsnode.inference.model import Model

    settings = load_settings(args.config)
    found = scan_series(args.series)
    if not found:
        from pacsnode.errors import PacsnodeError

        raise PacsnodeError(f"SERIES_DIR must hold DICOM files, got none under {', '.join(args.series)}")
    cache: dict[str, list[SeriesSelector]] = {}

    def selectors_of(model: str) -> list[SeriesSelector]:
        if model not in cache:
            card = Model.load(settings.model_file(model), threads=1).card
            cache[model] = input_selectors(card.inputs, settings.models[model].inputs, model=model)
        return cache[model]

    all_ok = True
    for title, members in _units(settings, found):
        print(f"{title}: {len(members)} series (series.group_by = {settings.series.group_by!r})")
        lines, ok = explain_unit(settings, members, selectors_of)
        print("\n".join(lines))
        all_ok &= ok
    return 0 if all_ok else 1
