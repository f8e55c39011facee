"""The status code in a relayed task info answer, found without parsing the JSON."""

from __future__ import annotations

import json

from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from clusterodm.proxy.tasks_api import answered_status

text = st.text(max_size=40)


@given(
    code=st.sampled_from([10, 20, 30, 40, 50]),
    name=text,
    output=st.lists(text, max_size=5),
    options=st.lists(st.fixed_dictionaries({"name": text, "value": text}), max_size=3),
    spaced=st.booleans(),
)
def test_the_status_code_is_found_whatever_the_strings_around_it(
    code: int, name: str, output: list[str], options: list[dict[str, str]], spaced: bool
) -> None:
    info = {
        "uuid": "5c6a2a5c-6cb4-4f5a-9b0a-0c9b6a0e2f11",
        "name": name,
        "dateCreated": 1,
        "processingTime": 2,
        "status": {"code": code},
        "options": options,
        "imagesCount": 3,
        "progress": 50,
        "output": output,
    }
    separators = (", ", ": ") if spaced else (",", ":")
    body = json.dumps(info, separators=separators).encode()
    assert answered_status(web.Response(body=body)) == code


@given(st.binary(max_size=200))
def test_any_other_body_gives_a_code_or_none_and_never_raises(body: bytes) -> None:
    found = answered_status(web.Response(body=body))
    assert found is None or 0 <= found <= 999


def test_a_name_that_looks_like_a_status_is_not_taken_for_it() -> None:
    info = {"name": '"status":{"code":40}', "status": {"code": 20}}
    body = json.dumps(info, separators=(",", ":")).encode()
    assert answered_status(web.Response(body=body)) == 20
    assert answered_status(web.Response(body=body, status=500)) is None
    assert answered_status(web.Response(text='{"error": "Invalid uuid"}')) is None
