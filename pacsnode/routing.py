"""Routing rules: a series' attributes → the first matching route, or None.

Pure functions over values. A route's criteria must all hold; an empty criterion
matches anything. Comparisons of coded values (Modality, BodyPartExamined, ImageType)
ignore case and surrounding spaces; ``series_description`` is a regular expression
searched in the SeriesDescription; every ImageType value listed must be present.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from pacsnode.config import Route, RouteMatch
from pacsnode.ledger import SeriesAttributes

__all__ = ["matches", "mismatches", "match_route", "route_unit", "UnitRoute"]


def _norm(v: str) -> str:
    return v.strip().upper()


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def mismatches(rule: RouteMatch, attrs: SeriesAttributes) -> list[str]:
    """Each criterion of ``rule`` that ``attrs`` fails, in words (empty: the series matches)."""
    why = []
    if rule.modality and _norm(attrs.modality) not in {_norm(m) for m in rule.modality}:
        why.append(f"Modality {attrs.modality or '(none)'} is not one of {', '.join(rule.modality)}")
    if rule.body_part and _norm(attrs.body_part) not in {_norm(b) for b in rule.body_part}:
        why.append(f"BodyPartExamined {attrs.body_part or '(none)'} is not one of {', '.join(rule.body_part)}")
    if rule.series_description and not _regex(rule.series_description).search(attrs.series_description):
        why.append(f"SeriesDescription {attrs.series_description!r} does not match {rule.series_description!r}")
    if rule.image_type:
        have = {_norm(v) for v in attrs.image_type}
        lacking = [v for v in rule.image_type if _norm(v) not in have]
        if lacking:
            shown = "\\".join(attrs.image_type) or "(none)"
            why.append(f"ImageType {shown} lacks {', '.join(lacking)}")
    if rule.sop_class_uid and attrs.sop_class_uid.strip() not in {u.strip() for u in rule.sop_class_uid}:
        why.append(f"SOPClassUID {attrs.sop_class_uid or '(none)'} is not one of {', '.join(rule.sop_class_uid)}")
    return why


def matches(rule: RouteMatch, attrs: SeriesAttributes) -> bool:
    """Does every non-empty criterion of ``rule`` hold for ``attrs``?"""
    return not mismatches(rule, attrs)


def match_route(attrs: SeriesAttributes, routes: Sequence[Route]) -> Route | None:
    """The first route (in config order) whose criteria all hold, else None."""
    for route in routes:
        if matches(route.match, attrs):
            return route
    return None


@dataclass(frozen=True)
class UnitRoute:
    """The route a unit (series or study) takes and which of its series matched it."""

    route: Route
    series_uids: tuple[str, ...]


def route_unit(series: Iterable[tuple[str, SeriesAttributes]], routes: Sequence[Route]) -> UnitRoute | None:
    """For a unit made of ``(series UID, attributes)`` pairs: the first route (config order)
    that at least one series matches, with every series matching it; None when no route does."""
    members = list(series)
    for route in routes:
        uids = tuple(uid for uid, attrs in members if matches(route.match, attrs))
        if uids:
            return UnitRoute(route, uids)
    return None
