"""Routing: first matching route in config order, None when nothing matches."""

from __future__ import annotations

import pytest

from pacsnode.config import Route, RouteMatch
from pacsnode.ledger import SeriesAttributes
from pacsnode.routing import match_route, route_unit

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"

ROUTES = (
    Route(name="brain", model="m", match=RouteMatch(modality=("MR",), body_part=("BRAIN", "HEAD"),
                                                     image_type=("ORIGINAL",))),
    Route(name="flair", model="m", match=RouteMatch(modality=("MR",), series_description="(?i)flair")),
    Route(name="ct", model="m", match=RouteMatch(sop_class_uid=(CT,))),
)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (SeriesAttributes("MR", "T1", "head", ("ORIGINAL", "PRIMARY"), MR), "brain"),
        (SeriesAttributes("mr ", "T1", "BRAIN", ("DERIVED",), MR), None),
        (SeriesAttributes("MR", "ax FLAIR", "KNEE", ("DERIVED",), MR), "flair"),
        (SeriesAttributes("CT", "abdomen", "", (), CT), "ct"),
        (SeriesAttributes("US", "", "", (), "1.2.3"), None),
    ],
)
def test_first_matching_route(attrs: SeriesAttributes, expected: str | None) -> None:
    route = match_route(attrs, ROUTES)
    assert (route.name if route else None) == expected


def test_empty_criteria_match_anything() -> None:
    assert match_route(SeriesAttributes(), (Route(name="all", model="m"),)).name == "all"


def test_study_unit_takes_first_route_any_series_matches() -> None:
    members = [("s1", SeriesAttributes("SR", "", "", (), "1.2")),
               ("s2", SeriesAttributes("MR", "FLAIR", "", (), MR)),
               ("s3", SeriesAttributes("MR", "flair 2", "", (), MR))]
    chosen = route_unit(members, ROUTES)
    assert chosen is not None and chosen.route.name == "flair" and chosen.series_uids == ("s2", "s3")
    assert route_unit(members[:1], ROUTES) is None
