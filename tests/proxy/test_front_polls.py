"""Task polls answered by the lean front (``proxy/front_polls.py``) answer exactly as aiohttp's
path does: the same raw requests to a cluster with the front and to one without it get the same
answers (all but the Date header) and the same metrics, in front of the simulated node and the
real NodeODM; whatever the front does not relay is aiohttp's, as it came."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.streams import EMPTY_PAYLOAD
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterodm.app import Cluster
from clusterodm.config import Timeouts
from clusterodm.nodes.paths import QUERY_ALLOWED
from clusterodm.proxy import front
from clusterodm.proxy.front_polls import PollAsk
from tests.conftest import ClusterFactory
from tests.helpers import eventually
from tests.helpers import write_atomically as write
from tests.proxy.test_front import (
    ALICE,
    BOB,
    USERS,
    H,
    ask,
    get,
    metrics,
    one_request,
    read_answer,
)

pytestmark = pytest.mark.timeout(120)


def poll_requests(uuid: str) -> dict[str, bytes]:
    task = f"/task/{uuid}"
    return {
        "info": get(f"{task}/info?token={ALICE}", H),
        "info origin": get(f"{task}/info?token={ALICE}", H, "Origin: http://app.example"),
        "info with_output": get(f"{task}/info?token={ALICE}&with_output=1", H),
        "info accept": get(f"{task}/info?with_output=0&token={ALICE}", H, "Accept: */*"),
        "output": get(f"{task}/output?token={ALICE}", H),
        "output line": get(f"{task}/output?token={ALICE}&line=2", H),
        "as pyodm sends it": get(
            f"{task}/info?token={ALICE}&with_output=0",
            H,
            "User-Agent: python-requests/2.31.0",
            "Accept-Encoding: gzip, deflate",
            "Accept: */*",
            "Connection: keep-alive",
        ),
        "connection close": get(f"{task}/info?token={ALICE}", H, "Connection: close"),
        # left to aiohttp
        "other user": get(f"{task}/info?token={BOB}", H),
        "no token": get(f"{task}/info", H),
        "wrong token": get(f"{task}/info?token=nope", H),
        "negative line": get(f"{task}/output?token={ALICE}&line=-1", H),
        "line on info": get(f"{task}/info?token={ALICE}&line=1", H),
        "two tokens": get(f"{task}/info?token={ALICE}&token={ALICE}", H),
        "upper case uuid": get(f"/task/{uuid.upper()}/info?token={ALICE}", H),
        "unknown uuid": get(f"/task/{uuidlib.uuid4()}/info?token={ALICE}", H),
        "if-none-match": get(f"{task}/info?token={ALICE}", H, 'If-None-Match: "x"'),
        "HEAD": get(f"{task}/info?token={ALICE}", H, method="HEAD"),
        "HTTP/1.0": get(f"{task}/info?token={ALICE}", H, version="1.0"),
        "no host": get(f"{task}/info?token={ALICE}"),
        "download": get(f"{task}/download/all.zip?token={ALICE}", H),
    }


RELAYED = {
    "info",
    "info origin",
    "info with_output",
    "info accept",
    "output",
    "output line",
    "as pyodm sends it",
}


async def finished_task(url: str, token: str = "") -> str:
    """A task made straight on the node, waited for until it completed."""
    async with aiohttp.ClientSession() as s:
        form = aiohttp.FormData()
        form.add_field("images", b"\xff\xd8" + b"i" * 2000, filename="a.jpg")
        r = await s.post(f"{url}/task/new", data=form, params={"token": token} if token else {})
        uuid: str = (await r.json())["uuid"]

        async def completed() -> bool:
            query = {"token": token} if token else {}
            info = await (await s.get(f"{url}/task/{uuid}/info", params=query)).json()
            return bool(info.get("status", {}).get("code") == 40)

        await eventually(completed, timeout_s=60, interval_s=0.2, message="task completed")
    return uuid


async def two_clusters(
    node: Any, cluster_factory: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Cluster, Cluster, str]:
    """A cluster with the front and one without, both routing one finished task of alice's
    to ``node``."""
    users = tmp_path / "users.toml"
    write(users, USERS)
    uuid = await finished_task(node.url, getattr(getattr(node, "config", None), "token", ""))
    with_front = await cluster_factory([node], users_file=str(users))
    monkeypatch.setenv("CLUSTERODM_FRONT", "off")
    without = await cluster_factory([node], users_file=str(users))
    monkeypatch.delenv("CLUSTERODM_FRONT")
    for cluster in (with_front, without):
        key = cluster.registry.nodes()[0].key
        await cluster.deps.routes.add(uuid, key, "alice")
    return with_front, without, uuid


async def test_polls_get_the_answers_aiohttp_gives(
    node_factory: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = await node_factory()
    fast, slow, uuid = await two_clusters(node, cluster_factory, tmp_path, monkeypatch)
    site = fast.sites["proxy"]
    assert isinstance(site, front.FrontSite)
    for name, raw in poll_requests(uuid).items():
        before = site.answered
        got, expected = await ask(fast, raw), await ask(slow, raw)
        assert got == expected, name
        assert site.answered - before == (1 if name in RELAYED else 0), name
    assert metrics(fast) == metrics(slow)
    assert any(b'route="/task/{uuid}/output",status="200"} 3.0' in m for m in metrics(fast))
    info = await ask(fast, poll_requests(uuid)["info"])
    assert b'"code":40' in info[-1].replace(b" ", b"")


async def test_a_kept_connection_and_pipelined_polls_behave_as_aiohttp(
    simnode_factory: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow, uuid = await two_clusters(
        await simnode_factory(), cluster_factory, tmp_path, monkeypatch
    )
    polls = poll_requests(uuid)
    answers = []
    for cluster in (fast, slow):
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.port)
        seen = []
        for name in ("info", "output", "info origin", "no token", "info"):
            writer.write(polls[name])
            seen.append(await read_answer(reader))
        writer.write(polls["info"] + polls["output line"])  # two in one write: aiohttp's
        seen += [await read_answer(reader), await read_answer(reader)]
        writer.close()
        answers.append(seen)
    assert answers[0] == answers[1]
    site = fast.sites["proxy"]
    assert isinstance(site, front.FrontSite) and site.answered == 3, "then aiohttp's"


async def test_a_node_out_of_reach_gets_aiohttp_s_answer(
    simnode_factory: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = await simnode_factory()
    fast, slow, uuid = await two_clusters(node, cluster_factory, tmp_path, monkeypatch)
    await node.stop()
    raw = poll_requests(uuid)["info"]
    got, expected = await ask(fast, raw), await ask(slow, raw)
    assert got == expected
    assert got[0].startswith(b"HTTP/1.1 200") and b'"error"' in got[-1]


async def test_a_client_leaving_during_a_poll_costs_nothing(
    simnode_factory: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = await simnode_factory()
    fast, _, uuid = await two_clusters(node, cluster_factory, tmp_path, monkeypatch)
    node.config.hang = True
    _, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(poll_requests(uuid)["info"])
    await writer.drain()
    await eventually(lambda: node.requests[f"/task/{uuid}/info"] > 0, message="asked the node")
    writer.close()
    node.config.hang = False
    answer = await ask(fast, poll_requests(uuid)["info"])
    assert answer[0] == b"HTTP/1.1 200 OK" and b'"uuid"' in answer[-1]


_UUID = "0f8e4c2a-5b6d-4e7f-9a1b-2c3d4e5f6a7b"
_PIECES = st.sampled_from(
    [
        "token=abc",
        "token=",
        "token=a%20b",
        "with_output=5",
        "with_output=-1",
        "line=3",
        "line=x",
        "with_output=",
        "x=1",
        "token=abc&token=abc",
        "",
        "&",
        "=",
        "token",
        "with_output=99999999999",
    ]
)
_POLL_TARGETS = st.builds(
    lambda path, pieces: path + ("?" + "&".join(pieces) if pieces else ""),
    st.sampled_from(
        [
            f"/task/{_UUID}/info",
            f"/task/{_UUID}/output",
            f"/task/{_UUID.upper()}/info",
            f"/task/{_UUID}/info/",
            f"/task/{_UUID}/download/all.zip",
            f"/task//{_UUID}/info",
        ]
    ),
    st.lists(_PIECES, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    target=_POLL_TARGETS,
    headers=st.lists(
        st.sampled_from(
            [
                "Origin: http://a",
                "Accept: */*",
                "If-None-Match: x",
                "Range: bytes=0-1",
                "Content-Length: 0",
                "Accept: a",
                "X-A: b",
                "Origin:",
            ]
        ),
        max_size=3,
    ),
    with_host=st.sampled_from([True, True, False]),
    after=st.sampled_from([b"", b"", b"x"]),
)
def test_what_the_front_relays_aiohttp_reads_as_the_same_poll(
    target: str, headers: list[str], with_host: bool, after: bytes
) -> None:
    """Whatever poll head the front relays, aiohttp's parser reads it as exactly one GET of the
    same path, with the same token, the same passed parameter and the same Origin and Accept."""
    lines = [f"GET {target} HTTP/1.1", *(["Host: cluster"] if with_host else []), *headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + after
    asked: list[PollAsk] = []

    def poll(ask: PollAsk, ip: str) -> Any:
        asked.append(ask)
        return None  # relay nothing: the decision to ask is what is checked

    made = front._Front(asyncio.Protocol, lambda t, ip: None, poll).respond(data, "127.0.0.1")
    assert made is None
    if not asked:
        return
    message, payload = one_request(data)
    ask = asked[0]
    assert (message.method, message.version, payload) == ("GET", (1, 1), EMPTY_PAYLOAD)
    assert message.url.path == f"/task/{ask.uuid}/{ask.action}"
    query = dict(message.url.query)
    assert query.pop("token", "") == ask.token
    assert query == ask.query
    assert set(query) <= QUERY_ALLOWED[ask.action]
    origin = message.headers.get("Origin")
    assert (origin.encode() if origin else None) == ask.origin
    assert message.headers.get("Accept") == ask.accept


async def test_a_frozen_node_is_asked_twice_once_then_left_to_aiohttp(
    simnode_factory: Any, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    """The front's poll times out: the node goes offline at once, aiohttp's path answers that
    poll (asking once more), and the next polls are aiohttp's alone: one node request each."""
    users = tmp_path / "users.toml"
    write(users, USERS)
    node = await simnode_factory()
    uuid = await finished_task(node.url)
    cluster = await cluster_factory(
        [node], users_file=str(users), timeouts=Timeouts(poll_s=0.5, connect_s=0.5)
    )
    await cluster.deps.routes.add(uuid, cluster.registry.nodes()[0].key, "alice")
    path = f"/task/{uuid}/info"
    node.config.hang = True
    before = node.requests[path]
    first = await ask(cluster, poll_requests(uuid)["info"])
    assert first[0].startswith(b"HTTP/1.1 ")
    assert node.requests[path] - before == 2, "the front, then aiohttp's path"
    assert not cluster.registry.is_online(cluster.registry.nodes()[0])
    await ask(cluster, poll_requests(uuid)["info"])
    assert node.requests[path] - before == 3, "aiohttp's path alone"
    node.config.hang = False
