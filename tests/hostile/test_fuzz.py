"""Generated requests on every route of the proxy and of the admin web (#15).

hypothesis builds paths (route templates with one part replaced, or free segments, with
escapes, dot segments and odd bytes), queries, headers, JSON and multipart bodies; each request
goes byte for byte over a socket of its own to a ``--users`` cluster in front of the simulated
node and of the real NodeODM, where user a has a finished task and user b another. For every
answer: no 5xx; an error is ``{"error": "..."}``; nothing of b's task, and no result but a's own
``all.zip`` asked for by its own path. After all of them: no traceback in the log, nothing
written outside the data dirs, and the cluster still answers ``/info``. The counts are printed
at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterodm.admin import AdminCommands, build_admin_app
from tests.conftest import ClusterFactory
from tests.hostile.setup import ALICE, Attack, Counts, all_records, start_attack, tracebacks

EXAMPLES = 250
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ESCAPES = ["%2F", "%2f", "%2E", "%2e", "%00", "%C0%AE", "%C0%AF", "%25", "%252F", "%3F", "%23"]
ESCAPES += ["%5C", "%ZZ", "%", "%E2%80%AE", "%FF", "%ED%A0%80"]
RAW = [".", "..", "\\", ";", "#", "?", "//", "~", "@", ":", "*", "$", "'", "(", "!"]


@dataclass
class Sent:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Got:
    status: int
    content_type: str
    body: bytes


async def exchange(port: int, sent: Sent, timeout_s: float = 15.0) -> Got:
    """One request on a connection of its own, exactly as built; the whole answer."""
    head = [f"{sent.method} {sent.target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{k}: {v}" for k, v in sent.headers]
    if sent.body or sent.method in ("POST", "PUT"):
        head.append(f"Content-Length: {len(sent.body)}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + sent.body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout_s)
    finally:
        writer.close()
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    content_type = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip()
    if "chunked" in top.lower().decode("latin-1"):
        body = _dechunk(body)
    return Got(status, content_type, body)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


# --- strategies -----------------------------------------------------------------------------

printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="%")
fuzz_text = st.one_of(
    st.text(printable, min_size=1, max_size=12),
    st.sampled_from(ESCAPES + RAW),
    st.lists(st.sampled_from(ESCAPES + RAW + ["a", "task", "info", "list"]), max_size=6).map(
        "".join
    ),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6).map(quote),
    st.just("a" * 3000),
)


def path_templates(ua: str) -> list[str]:
    return [
        "/",
        "/info",
        "/options",
        "/task/list",
        f"/task/{ua}/info",
        f"/task/{ua}/output",
        f"/task/{ua}/download/{{x}}",
        "/task/{x}/info",
        "/task/{x}/download/all.zip",
        "/task/new/init",
        f"/task/new/upload/{ua}",
        "/task/new/upload/{x}",
        "/task/new/commit/{x}",
        "/task/new",
        "/task/cancel",
        "/task/remove",
        "/task/restart",
        "/auth/info",
        "/auth/login",
        "/commit",
        "/cache/clear",
        "/js/{x}.js",
        "/css/{x}",
        "/{x}",
        "/{x}/{x}",
        "/task/{x}",
        "/metrics",
    ]


@st.composite
def paths(draw: st.DrawFn, templates: list[str]) -> str:
    template = draw(st.sampled_from(templates))
    while "{x}" in template:
        template = template.replace("{x}", draw(fuzz_text), 1)
    if draw(st.booleans()):
        return template
    # a part replaced somewhere in a template that had none
    parts = template.split("/")
    i = draw(st.integers(0, len(parts) - 1))
    parts[i] = draw(fuzz_text)
    return "/".join(parts) or "/"


def queries(token: str) -> st.SearchStrategy[str]:
    """Query strings as sent: known and odd keys, values quoted, or raw escapes (invalid UTF-8,
    overlong forms, a ``%`` alone)."""
    keys = st.sampled_from(["token", "with_output", "line", "limit", "uuid", "Token", "x"])
    values = st.one_of(
        st.just(token),
        st.sampled_from(["0", "-1", "1e400", "7" * 5000, "²", "①", "٣", "", "true"]).map(quote),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8).map(quote),
        st.lists(st.sampled_from([*ESCAPES, "a", "0"]), max_size=4).map("".join),
    )
    pair = st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(pair, max_size=4).map(lambda ps: "?" + "&".join(ps) if ps else "")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([10**400, -(10**400)]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_bodies = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries({"uuid": st.text(max_size=40), "options": json_values}).map(json.dumps),
    st.just("[" * 50_000),
).map(str.encode)

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)


@st.composite
def multipart(draw: st.DrawFn) -> tuple[str, bytes]:
    boundary = draw(st.one_of(st.just("XbOuNdArY"), st.text(printable, min_size=1, max_size=300)))
    chunks = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["images", "options", "name", "dateCreated", "x", ""]))
        disposition = f'form-data; name="{name}"'
        filename = draw(st.one_of(st.none(), fuzz_text, header_text))
        if filename is not None:
            disposition += f'; filename="{filename}"'
        if draw(st.booleans()):
            charset = draw(st.sampled_from(["utf-8", "latin-1", "x-unknown", "utf-16", ""]))
            disposition += f"; filename*={charset}''{draw(fuzz_text)}"
        value = draw(st.one_of(json_bodies, st.binary(max_size=64)))
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode(
                "utf-8", "surrogateescape"
            )
            + value
            + b"\r\n"
        )
    closing = f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b""
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks) + closing


@st.composite
def requests(draw: st.DrawFn, templates: list[str], token: str) -> Sent:
    method = draw(st.sampled_from(["GET", "GET", "POST", "POST", "HEAD", "PUT", "DELETE"]))
    target = draw(paths(templates)) + draw(queries(token))
    headers: list[tuple[str, str]] = []
    body = b""
    kind = draw(st.sampled_from(["none", "json", "multipart", "form", "raw"]))
    if kind == "json":
        body = draw(json_bodies)
        headers.append(("Content-Type", "application/json"))
    elif kind == "multipart":
        content_type, body = draw(multipart())
        headers.append(("Content-Type", content_type))
    elif kind == "form":
        body = draw(queries(token)).lstrip("?").encode()
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    elif kind == "raw":
        body = draw(st.binary(max_size=200))
        headers.append(("Content-Type", draw(header_text)))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Content-Encoding", draw(st.sampled_from(["gzip", "deflate", "br", "x"]))))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Range", draw(header_text)))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("set-uuid", draw(fuzz_text)))
    return Sent(method, target, headers, body)


# --- the checks -----------------------------------------------------------------------------


@dataclass
class Ledger:
    counts: Counts
    malformed: int = 0


def check(sent: Sent, got: Got, secrets: list[str], own_zip: str, ledger: Ledger) -> None:
    ledger.counts.requests += 1
    if got.status >= 500:
        ledger.counts.server_errors += 1
    assert got.status < 500, (sent, got)
    text = got.body.decode("utf-8", "replace")
    for secret in secrets:
        assert secret not in text, (sent, got)
    if b"PK\x03\x04" in got.body:
        assert sent.target.split("?")[0] == own_zip, (sent, got)
    if got.status >= 400 and sent.method != "HEAD":
        if got.content_type.startswith("text/plain"):  # aiohttp's parser: not HTTP at all
            ledger.malformed += 1
            return
        if got.status == 401 and (not got.body or sent.target.startswith("/signout")):
            return  # the admin web's sign-out page is a 401 on purpose
        if got.status == 416 and not got.body:
            return  # a Range that a file cannot satisfy: HTTP's own answer, as NodeODM gives
        try:
            body = json.loads(got.body)
        except ValueError:
            body = None
        shaped = isinstance(body, dict) and isinstance(body.get("error"), str)
        assert shaped, f"{sent!r} -> {got.status} {got.content_type} {got.body[:200]!r}"


def outside_files(root: Path, allowed: list[Path]) -> set[Path]:
    return {
        p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)
    }


@pytest.fixture
async def fuzzed(
    node_factory: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> AsyncIterator[tuple[Attack, Ledger]]:
    caplog.set_level(logging.DEBUG)
    node = await node_factory(test_seconds=1)
    before = outside_files(tmp_path, [])
    cwd_before = set(Path.cwd().iterdir())
    async with aiohttp.ClientSession() as session:
        # wrong tokens are most of what is sent: the failed-token guard would answer 429 to
        # everything after the tenth, and the rest of the cluster would go untested
        attack = await start_attack(
            "users", node, cluster_factory, tmp_path, session, auth_fail_limit=10**9
        )
        ledger = Ledger(attack.counts)
        yield attack, ledger
        found = tracebacks(all_records(caplog))
        ledger.counts.tracebacks = len(found)
        record_property("hostile", {**ledger.counts.as_dict(), "malformed": ledger.malformed})
        assert not found, [(r.name, r.getMessage()[:300]) for r in found]
        assert ledger.counts.server_errors == 0
        info = await attack.send(f"/info?token={ALICE}")
        assert info.status == 200 and "version" in info.json()
    data = attack.cluster.settings.data_dir
    stray = outside_files(tmp_path, [data]) - before - {tmp_path / "users.toml"}
    assert not stray, stray
    assert set(Path.cwd().iterdir()) == cwd_before


@FUZZ
@given(data=st.data())
async def test_generated_requests_on_every_proxy_route(
    fuzzed: tuple[Attack, Ledger], data: st.DataObject
) -> None:
    attack, ledger = fuzzed
    ua, ub = attack.uuids["a"], attack.uuids["b"]
    sent = data.draw(requests(path_templates(ua), ALICE))
    got = await exchange(attack.cluster.port, sent)
    check(sent, got, [ub], f"/task/{ua}/download/all.zip", ledger)


ADMIN_TEMPLATES = [
    "/",
    "/signout",
    "/r/info",
    "/r/node/list",
    "/r/node/add",
    "/r/node",
    "/r/node/lock",
    "/r/node/unlock",
    "/r/tasks",
    "/r/routes",
    "/static/{x}",
    "/static/admin.js",
    "/{x}",
    "/r/{x}",
]


@FUZZ
@given(data=st.data())
async def test_generated_requests_on_every_admin_route(
    fuzzed: tuple[Attack, Ledger], data: st.DataObject
) -> None:
    attack, ledger = fuzzed
    cluster = attack.cluster
    site = cluster.sites.get("admin-web")
    if site is None:
        site = await cluster.add_site(
            "admin-web", build_admin_app(AdminCommands(cluster.deps), ""), 0
        )
    sent = data.draw(requests(ADMIN_TEMPLATES, ALICE))
    got = await exchange(site.port, sent)
    # the admin web sees every task: only the secrets of the cluster's own files count here
    check(sent, got, [], "", ledger)
