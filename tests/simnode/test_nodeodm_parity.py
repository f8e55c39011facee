"""Behaviours found different from a live NodeODM (bench/compare_nodeodm.py) and fixed."""

from __future__ import annotations

import math

import aiohttp
import pytest

from clusterodm.simnode import SimNode, TaskStatus
from clusterodm.simnode.jsvalues import JsonError, parse_json, slice_start, to_number
from tests.helpers import eventually

from .conftest import StartNode, create_task, fields_form, get_json, post_json

# (text, message) pairs as Node.js 20 (V8) words them; checked with ``JSON.parse`` in Node 20.
V8_MESSAGES = [
    ("", "Unexpected end of JSON input"),
    ("  ", "Unexpected end of JSON input"),
    ("tru", "Unexpected end of JSON input"),
    ("[{", "Expected property name or '}' in JSON at position 2"),
    ("{1}", "Expected property name or '}' in JSON at position 1"),
    ("nope", "Unexpected token 'o', \"nope\" is not valid JSON"),
    ("x", "Unexpected token 'x', \"x\" is not valid JSON"),
    ("[1,]", "Unexpected token ']', \"[1,]\" is not valid JSON"),
    ("[nul]", "Unexpected token ']', \"[nul]\" is not valid JSON"),
    ("[1 2]", "Expected ',' or ']' after array element in JSON at position 3"),
    ("[1", "Expected ',' or ']' after array element in JSON at position 2"),
    ('{"a" 1}', "Expected ':' after property name in JSON at position 5"),
    ('{"a":1,"b" 2}', "Unexpected number in JSON at position 11"),
    ('{"a":1', "Expected ',' or '}' after property value in JSON at position 6"),
    ('{"a":1,}', "Expected double-quoted property name in JSON at position 7"),
    ('["abc', "Unterminated string in JSON at position 5"),
    ('"a\nb"', "Bad control character in string literal in JSON at position 2"),
    ('"a\\q"', "Bad escaped character in JSON at position 3"),
    ('"\\u12g4"', "Bad Unicode escape in JSON at position 5"),
    ("-", "No number after minus sign in JSON at position 1"),
    ("1.", "Unterminated fractional number in JSON at position 2"),
    ("1e+", "Exponent part is missing a number in JSON at position 3"),
    ("01", "Unexpected number in JSON at position 1"),
    ('"abc" 1', "Unexpected non-whitespace character after JSON at position 6"),
    ("NaN", '"NaN" is not valid JSON'),
    ("Infinity", '"Infinity" is not valid JSON'),
    ("undefined", '"undefined" is not valid JSON'),
    ("abcdefghijklmnopqrstuvwxyz", "Unexpected token 'a', \"abcdefghij\"... is not valid JSON"),
    ("[1,2,3,4,5,6,7,8,9,x]", "Unexpected token 'x', ...\"5,6,7,8,9,x]\" is not valid JSON"),
    (
        "[1,2,3,4,5,6,7,8,9,10,x,12,13,14,15,16,17,18,19]",
        "Unexpected token 'x', ...\",7,8,9,10,x,12,13,14\"... is not valid JSON",
    ),
]


@pytest.mark.parametrize(("text", "message"), V8_MESSAGES)
def test_json_errors_read_as_in_node(text: str, message: str) -> None:
    with pytest.raises(JsonError) as error:
        parse_json(text)
    assert str(error.value) == message


def test_json_accepts_what_json_parse_accepts() -> None:
    assert parse_json(' [{"name": "a", "value": -1.5e3}, true, null, "\\u00e9"] ') == [
        {"name": "a", "value": -1500.0},
        True,
        None,
        "é",
    ]


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        (None, 0),
        ("", 0),
        ("3", 3),
        (" 3 ", 3),
        ("2.7", 2),
        ("-2.7", -2),
        ("-3", -3),
        ("abc", 0),
        ("5abc", 0),  # Number("5abc") is NaN, unlike parseInt
        ("0x10", 16),
        ("1e2", 100),
        ("+4", 4),
    ],
)
def test_line_converts_like_javascript_number(raw: str | None, start: int) -> None:
    assert slice_start(raw) == start


def test_to_number_edges() -> None:
    assert math.isinf(to_number("Infinity")) and to_number("-Infinity") < 0
    assert math.isnan(to_number("0x")) and math.isnan(to_number("--1"))
    assert slice_start("Infinity") > 10**9 and slice_start("-Infinity") < -(10**9)


async def test_output_line_query(node: SimNode, http: aiohttp.ClientSession) -> None:
    uuid = await create_task(http, node.url)
    await eventually(lambda: node.tasks[uuid].status == TaskStatus.COMPLETED, message="done")
    output = node.tasks[uuid].output
    base = f"{node.url}/task/{uuid}"
    assert (await get_json(http, f"{base}/output?line=5abc"))[1] == output
    assert (await get_json(http, f"{base}/output?line=Infinity"))[1] == []
    assert (await get_json(http, f"{base}/output?line=-1e1"))[1] == output[-10:]
    assert (await get_json(http, f"{base}/info?with_output=2abc"))[1]["output"] == output


async def test_bad_json_answers_carry_node_text(node: SimNode, http: aiohttp.ClientSession) -> None:
    for text, message in (("nope", V8_MESSAGES[5][1]), ("NaN", '"NaN" is not valid JSON')):
        _, body = await post_json(http, f"{node.url}/task/new/init", data=fields_form(options=text))
        assert body == {"error": message}
    _, body = await post_json(
        http,
        f"{node.url}/task/cancel",
        data="{uuid",
        headers={"Content-Type": "application/json"},
    )
    assert body == {"error": "Expected property name or '}' in JSON at position 1"}


async def test_bad_outputs_json_means_default_contents(
    node: SimNode, http: aiohttp.ClientSession
) -> None:
    uuid = await create_task(http, node.url, fields={"name": "o", "outputs": "[x"})
    assert node.tasks[uuid].outputs is None


async def test_restart_with_options_adds_post_processing_defaults(
    start_node: StartNode, http: aiohttp.ClientSession
) -> None:
    node = await start_node(test_seconds=0.05)
    plain = await create_task(http, node.url)
    skipping = await create_task(http, node.url, fields={"name": "s", "skipPostProcessing": "true"})
    for uuid in (plain, skipping):
        await eventually(lambda u=uuid: node.tasks[u].status == TaskStatus.COMPLETED, message="end")
        options = '[{"name": "dsm", "value": true}]'
        _, body = await post_json(
            http, f"{node.url}/task/restart", data={"uuid": uuid, "options": options}
        )
        assert body == {"success": True}
    names = [o["name"] for o in node.tasks[plain].options]
    assert names == ["dsm", "pc-ept", "cog", "gltf"]
    assert node.tasks[skipping].options == [{"name": "dsm", "value": True}]
