"""Option rules (clusterodm/tasks/limits.py): the /options view, init checks, enforcement."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clusterodm.access.base import Limits
from clusterodm.errors import InvalidRequest
from clusterodm.tasks.limits import check_options, enforce, limited_options, parse_rules

KNOWN: list[dict[str, Any]] = [
    {
        "name": "feature-quality",
        "type": "enum",
        "value": "high",
        "domain": ["high", "medium", "low"],
    },
    {"name": "min-num-features", "type": "int", "value": "10000", "domain": "integer"},
    {"name": "max-concurrency", "type": "int", "value": "4", "domain": "positive integer"},
    {"name": "dsm", "type": "bool", "value": "false", "domain": ""},
    {"name": "split", "type": "int", "value": "999999", "domain": "positive integer"},
]

RULES = {
    "feature-quality": {"domain": ["medium", "low"], "value": "medium"},
    "min-num-features": {"between": {"min": 1000, "max": 20000, "max_if_equal_to": 0}},
    "dsm": {"value": True, "assure": True},
    "split": {"remove": True},
}
LIMITED = Limits(max_images=10, options=RULES)


def by_name(options: list[dict[str, Any]]) -> dict[str, Any]:
    return {o["name"]: o for o in options}


def test_options_view_hides_clamps_and_fixes() -> None:
    view = by_name(limited_options(KNOWN, LIMITED))
    assert "split" not in view and "max-concurrency" not in view
    assert view["feature-quality"]["domain"] == ["medium", "low"]
    assert view["feature-quality"]["value"] == "medium"
    assert view["min-num-features"]["domain"] == "integer: 1000 <= x <= 20000"
    assert view["dsm"]["value"] == "true"


def test_no_limits_shows_everything() -> None:
    assert limited_options(KNOWN, Limits()) == KNOWN


def test_max_concurrency_hidden_when_limited_unless_a_rule_names_it() -> None:
    assert "max-concurrency" not in by_name(limited_options(KNOWN, Limits(max_images=3)))
    ruled = Limits(options={"max-concurrency": {"between": {"min": 1, "max": 2}}})
    assert by_name(limited_options(KNOWN, ruled))["max-concurrency"]["domain"] == (
        "integer: 1 <= x <= 2"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], {"dsm": True}),
        ([{"name": "min-num-features", "value": "50000"}], {"min-num-features": 20000}),
        ([{"name": "min-num-features", "value": 5}], {"min-num-features": 1000}),
        ([{"name": "min-num-features", "value": 0}], {"min-num-features": 20000}),
        ([{"name": "dsm", "value": "false"}], {"dsm": True}),
        ([{"name": "split", "value": 10}, {"name": "max-concurrency", "value": 64}], {}),
        ([{"name": "feature-quality", "value": "low"}], {"feature-quality": "medium"}),
    ],
)
def test_check_clamps_forces_and_drops(
    given: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    out = {o["name"]: o["value"] for o in check_options(given, KNOWN, LIMITED)}
    assert out == {"dsm": True, **expected}


def test_check_refuses_values_outside_a_rule_domain() -> None:
    with pytest.raises(InvalidRequest) as e:
        check_options(
            [{"name": "feature-quality", "value": "high"}],
            KNOWN,
            Limits(options={"feature-quality": {"domain": ["medium", "low"]}}),
        )
    assert json.loads(e.value.message) == [
        {"name": "feature-quality", "error": "Invalid value high (not in enum)"}
    ]


def test_enforce_is_idempotent_and_applies_new_rules() -> None:
    once = enforce([{"name": "min-num-features", "value": 30000}], LIMITED)
    assert enforce(once, LIMITED) == once
    assert by_name(once)["min-num-features"]["value"] == 20000


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ({"x": {"between": {"min": 5, "max": 1}}}, "above"),
        ({"x": {"nope": 1}}, "unknown rule"),
        ({"x": {"assure": True}}, "assure needs a value"),
        ({"x": {"between": {"min": "a"}}}, "must be a number"),
        ({"x": {"domain": 3}}, "domain"),
        ({"x": 3}, "must be a table"),
    ],
)
def test_bad_rules_name_the_problem(rules: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_rules(rules)
