"""Option validation as NodeODM does it, against the simulated node's option list."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from clusterodm.errors import InvalidRequest
from clusterodm.tasks.options import apply_splitmerge, parse_options, validate_options

KNOWN: list[dict[str, Any]] = json.loads(
    resources.files("clusterodm.simnode").joinpath("options.json").read_text()
)


def errors_of(options: list[dict[str, Any]]) -> list[dict[str, str]]:
    with pytest.raises(InvalidRequest) as e:
        validate_options(options, KNOWN)
    return json.loads(e.value.message)


def test_typed_and_in_node_order_unknown_dropped() -> None:
    out = validate_options(
        [
            {"name": "orthophoto-resolution", "value": "2.5"},
            {"name": "no-such-option", "value": 1},
            {"name": "fast-orthophoto", "value": "true"},
            {"name": "min-num-features", "value": "8000"},
        ],
        KNOWN,
    )
    assert out == [
        {"name": "min-num-features", "value": 8000},
        {"name": "fast-orthophoto", "value": True},
        {"name": "orthophoto-resolution", "value": 2.5},
    ]


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ({"name": "feature-type", "value": "foo"}, "Invalid value foo (not in enum)"),
        ({"name": "min-num-features", "value": "abc"}, "Invalid value NaN (out of range)"),
        ({"name": "fast-orthophoto", "value": "maybe"}, "Cannot convert maybe to boolean"),
    ],
)
def test_errors_in_nodeodm_words(option: dict[str, Any], error: str) -> None:
    assert errors_of([option]) == [{"name": option["name"], "error": error}]


def test_parse_options() -> None:
    assert parse_options('[{"name": "a", "value": 1}]') == [{"name": "a", "value": 1}]
    assert parse_options('{"name": "a"}') == []
    assert parse_options("") == []
    with pytest.raises(InvalidRequest):
        parse_options("[{")


def test_splitmerge() -> None:
    opts = [{"name": "split", "value": 100}, {"name": "sm-cluster", "value": "http://evil"}]
    out = apply_splitmerge(opts, "http://c:3000/", "tok", enabled=True)
    assert out[-1] == {"name": "sm-cluster", "value": "http://c:3000/?token=tok"}
    assert apply_splitmerge(opts, "http://c", "", enabled=False) == [opts[0]]
    assert apply_splitmerge([], "http://c", "", enabled=True) == []
