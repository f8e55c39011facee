"""FormReader against real HTTP requests on loopback: parts in order, and every bad body."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import FormData, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterodm.errors import InvalidRequest
from clusterodm.proxy.formdata import form_reader
from tests.helpers import serving

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Probe:
    """The probe server: ``await probe(data, headers, **query)`` posts and answers its JSON."""

    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self.port = port
        self.session = session

    async def __call__(self, data: Any, headers: dict[str, str] | None = None, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/"
        async with self.session.post(url, data=data, headers=headers, params=query) as r:
            return await r.json()


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    """A server that reads its request with FormReader and answers what it found."""

    async def handler(request: web.Request) -> web.Response:
        try:
            reader = form_reader(request)
            if reader is None:
                return web.json_response({"none": True})
            reader.idle_s = float(request.query.get("idle", "30"))
            parts: list[dict[str, Any]] = []
            while (part := await reader.next()) is not None:
                if part.filename is None:
                    parts.append({"name": part.name, "text": await reader.text(part.name)})
                else:
                    size, head = 0, b""
                    async for chunk in reader.chunks():
                        head = head or bytes(chunk[:4])
                        size += len(chunk)
                    parts.append({"file": part.filename, "size": size, "head": head.hex()})
            return web.json_response({"parts": parts, "unread": reader.unread})
        except InvalidRequest as e:
            return web.json_response({"error": e.message})

    async with serving(posting(handler)) as port, aiohttp.ClientSession() as session:
        yield Probe(port, session)


def posting(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_post("/", handler)
    return app


async def raw_request(port: int, head: bytes, body_parts: list[bytes], linger_s: float) -> bytes:
    """Send a request by hand (bodies aiohttp's client would not send), then read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    for part in body_parts:
        writer.write(part)
        await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), linger_s)
    finally:
        writer.close()


async def test_fields_and_files_in_order(probe: Probe) -> None:
    big = os.urandom(3_000_000)
    form = FormData()
    form.add_field("name", "survey")
    form.add_field("images", b"\xff\xd8small", filename="a.jpg")
    form.add_field("images", big, filename="b.JPG")
    answer = await probe(form)
    assert answer["parts"] == [
        {"name": "name", "text": "survey"},
        {"file": "a.jpg", "size": 7, "head": "ffd8736d"},
        {"file": "b.JPG", "size": len(big), "head": big[:4].hex()},
    ]
    assert answer["unread"] is False, "a body that was read cannot be relayed from its start"


async def test_utf8_and_extended_file_names(probe: Probe) -> None:
    """Browsers and requests send UTF-8 names as they are; RFC 5987 ``filename*`` wins."""
    body = b"".join(
        [
            b"--b\r\n",
            'Content-Disposition: form-data; name="images"; filename="Bild_überflug.JPG"'.encode(),
            b"\r\n\r\nA\r\n--b\r\n",
            b'Content-Disposition: form-data; name="images"; filename="fallback.jpg"; '
            b"filename*=UTF-8''%E8%88%AA%E6%8B%8D.jpg\r\n\r\nB\r\n--b--\r\n",
        ]
    )
    answer = await probe(body, {"Content-Type": "multipart/form-data; boundary=b"})
    assert [p["file"] for p in answer["parts"]] == ["Bild_überflug.JPG", "航拍.jpg"]


async def test_a_large_file_is_read_whole(probe: Probe) -> None:
    data = os.urandom(700_000)
    body = b"".join(
        [
            b"--XyZ\r\n",
            b'Content-Disposition: form-data; name="images"; filename="one.jpg"\r\n\r\n',
            data,
            b"\r\n--XyZ--\r\n",
        ]
    )
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    answer = await probe(body, headers)
    assert answer["parts"] == [{"file": "one.jpg", "size": len(data), "head": data[:4].hex()}]


async def test_not_multipart_is_no_form(probe: Probe) -> None:
    assert await probe(b"a=1", {"Content-Type": "application/x-www-form-urlencoded"}) == {
        "none": True
    }


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("multipart/form-data", b"--x\r\n\r\n", "no boundary"),
        ("multipart/form-data; boundary=x", b"garbage without any boundary", "Malformed"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\nabc',
            "ended before its last part",
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n--y--\r\n--x--\r\n",
            "Nested multipart bodies are not supported",
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nX-" + b"h" * 20_000 + b": v\r\n\r\n--x--\r\n",
            "Malformed multipart body",
        ),
    ],
    ids=["no-boundary", "no-parts", "truncated", "nested", "long-header"],
)
async def test_bad_bodies_are_clear_errors(
    probe: Probe, content_type: str, body: bytes, error: str
) -> None:
    answer = await probe(body, {"Content-Type": content_type})
    assert error in answer["error"]


async def test_field_too_large(probe: Probe) -> None:
    form = FormData(default_to_multipart=True)
    form.add_field("options", "x" * (1024 * 1024 + 1))
    assert (await probe(form))["error"] == "Field options is too large"


async def test_stalled_upload_is_dropped(probe: Probe) -> None:
    head = (
        b"POST /?idle=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    )
    first = b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\nab'
    answer = await raw_request(probe.port, head, [first], linger_s=10)
    assert b"Upload stalled: nothing received for 1 s" in answer


@pytest.fixture
async def urlencoded_probe() -> AsyncIterator[str]:
    """A server that answers the fields ``urlencoded_fields`` read from its request."""
    from clusterodm.proxy.formdata import urlencoded_fields

    async def handler(request: web.Request) -> web.Response:
        try:
            return web.json_response({"fields": await urlencoded_fields(request)})
        except InvalidRequest as e:
            return web.json_response({"error": e.message})

    async with serving(posting(handler)) as port:
        yield f"http://127.0.0.1:{port}/"


_field_names = st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=st.dictionaries(_field_names, st.text(max_size=200), max_size=8))
async def test_urlencoded_fields_read_back_what_was_encoded(
    urlencoded_probe: str, fields: dict[str, str]
) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    body = urlencode(fields).encode()
    async with aiohttp.ClientSession() as s:
        async with s.post(urlencoded_probe, data=body, headers=headers) as r:
            answer = await r.json()
    assert answer == {"fields": fields}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=300))
async def test_any_urlencoded_body_gives_fields_or_an_error(
    urlencoded_probe: str, body: bytes
) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession() as s:
        async with s.post(urlencoded_probe, data=body, headers=headers) as r:
            assert r.status == 200
            answer = await r.json()
    assert set(answer) <= {"fields", "error"}


async def test_a_chunked_body_in_small_pieces_is_read_to_its_end(probe: Probe) -> None:
    """Transfer-Encoding: chunked, one byte per chunk at the boundaries: every part arrives."""
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nchunked\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + b"\xff\xd8"
        + bytes(5000)
        + f"\r\n--{boundary}--\r\n".encode()
    )

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]
            await asyncio.sleep(0)

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    answer = await probe(pieces(), headers)
    text, image = answer["parts"]
    assert text == {"name": "name", "text": "chunked"}
    assert image["file"] == "a.jpg" and image["size"] == 5002
