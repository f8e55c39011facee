"""V8's JSON.parse errors as the original ClusterODM 1.5.8 (Node.js 14) answers them for a bad
``options`` field; the table was recorded from the original in front of the real NodeODM, and is
checked against a running original when ``CLUSTERODM_ORIGINAL_SH`` is set."""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterodm.tasks.jsjson import JsJsonError, loads
from tests.admin.test_original_codes import ask, original  # noqa: F401  (the fixture)
from tests.helpers import eventually

#: (options text, the original's error)
ORIGINAL = [
    ("bad", "Unexpected token b in JSON at position 0"),
    ("nope", "Unexpected token o in JSON at position 1"),
    ("[", "Unexpected end of JSON input"),
    ("[{", "Unexpected end of JSON input"),
    ("{", "Unexpected end of JSON input"),
    ("[1,]", "Unexpected token ] in JSON at position 3"),
    ("[1 2]", "Unexpected number in JSON at position 3"),
    ('[{"a" "b"}]', "Unexpected string in JSON at position 6"),
    ("tru", "Unexpected end of JSON input"),
    ("[tru]", "Unexpected token ] in JSON at position 4"),
    ("nul", "Unexpected end of JSON input"),
    ("NaN", "Unexpected token N in JSON at position 0"),
    ("[Infinity]", "Unexpected token I in JSON at position 1"),
    ("-Infinity", "Unexpected token I in JSON at position 1"),
    ('["a\\x"]', "Unexpected token x in JSON at position 4"),
    ('["a\nb"]', "Unexpected token \n in JSON at position 3"),
    ("[1]x", "Unexpected token x in JSON at position 3"),
    ('[1] "s"', "Unexpected string in JSON at position 4"),
    ('["abc', "Unexpected end of JSON input"),
    ("[-]", "Unexpected token ] in JSON at position 2"),
    ("[01]", "Unexpected number in JSON at position 2"),
    ("[1.]", "Unexpected token ] in JSON at position 3"),
    ("{'a':1}", "Unexpected token ' in JSON at position 1"),
    ("[,1]", "Unexpected token , in JSON at position 1"),
    (" ", "Unexpected end of JSON input"),
    ("[1,2", "Unexpected end of JSON input"),
    ('{"a":1,}', "Unexpected token } in JSON at position 7"),
    ("[nulx]", "Unexpected token x in JSON at position 4"),
    ("[truex]", "Unexpected token x in JSON at position 5"),
    ('["\\u12"]', "Unexpected string in JSON at position 6"),
    ("12 13", "Unexpected number in JSON at position 3"),
    ("[1e]", "Unexpected token ] in JSON at position 3"),
    ("[-x]", "Unexpected token x in JSON at position 2"),
    ("[.5]", "Unexpected token . in JSON at position 1"),
    ("[+1]", "Unexpected token + in JSON at position 1"),
]


@pytest.mark.parametrize(("text", "error"), ORIGINAL)
def test_errors_are_the_originals(text: str, error: str) -> None:
    with pytest.raises(JsJsonError) as caught:
        loads(text)
    assert str(caught.value) == error


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_valid_json_parses_as_python_does(value: object) -> None:
    assert loads(json.dumps(value)) == value


@given(st.text(max_size=40))
def test_any_text_parses_or_fails_with_a_v8_message(text: str) -> None:
    try:
        value = loads(text)
    except JsJsonError as e:
        message = str(e)
        assert message == "Unexpected end of JSON input" or " in JSON at position " in message
        if " at position " in message:
            assert 0 <= int(message.rsplit(" ", 1)[1]) < len(text)
    else:
        assert not (isinstance(value, float) and not math.isfinite(value))


async def test_the_table_is_what_the_running_original_answers(
    original: tuple[int, int],  # noqa: F811
    real_node_factory: Any,
) -> None:
    port, cli = original
    node = await real_node_factory(test_seconds=1)
    assert await ask(cli, f"NODE ADD {node.host} {node.port}") == "OK"

    async def error_of(s: aiohttp.ClientSession, text: str) -> str | None:
        form = aiohttp.FormData({"options": text}, default_to_multipart=True)
        async with s.post(f"http://127.0.0.1:{port}/task/new/init", data=form) as r:
            answer = await r.json()
        return answer.get("error")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:

        async def sees_its_node() -> bool:
            return await error_of(s, "bad") != "Cannot create task, no nodes are online."

        await eventually(sees_its_node, timeout_s=20, message="the original sees its node")
        got = [(text, await error_of(s, text)) for text, _ in ORIGINAL]
    assert got == ORIGINAL
