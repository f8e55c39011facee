"""Nobody gets past the token, nobody reads another user's task (#15).

Each request of the report, and a traversal corpus around them (encoded dots and slashes, double
encoding, backslashes, ``;`` parameters, overlong UTF-8, a ``?`` or ``#`` hidden in the path),
sent byte for byte to a cluster with ``--token`` and one with ``--users``, in front of the
simulated node and of the real NodeODM. Every one is refused (400/401/403/404, or NodeODM's
``{"error"}``) and carries no data; the legitimate requests beside them still work.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ClusterFactory
from tests.hostile.setup import Answer, Attack, all_records, start_attack, tracebacks

DOTS = ["..", ".%2E", "%2E.", "%2e%2e", "%252E%252E", "%C0%AE%C0%AE", "%E0%80%AE.", "..;", "."]
SEPS = ["/", "%2F", "%2f", "%252F", "%5C", "\\", "%C0%AF", ";/"]
SUFFIXES = ["", "%3F.js", "%23.js", ";.js", "%00.js", "%3Fx.css"]


@pytest.fixture(params=["token", "users"])
async def attack(
    request: pytest.FixtureRequest,
    node_factory: Any,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> AsyncIterator[Attack]:
    caplog.set_level(logging.DEBUG)
    node = await node_factory(test_seconds=1)
    async with aiohttp.ClientSession() as session:
        attack = await start_attack(request.param, node, cluster_factory, tmp_path, session)
        yield attack
        found = tracebacks(all_records(caplog))
        attack.counts.tracebacks = len(found)
        record_property("hostile", attack.counts.as_dict())
        assert not found, [r.getMessage() for r in found]
        assert attack.counts.server_errors == 0
        info = await attack.send(f"/info?token={attack.token('a')}")
        assert info.status == 200 and "version" in info.json()


def refused(answer: Answer, *secrets: str) -> None:
    """Refused, NodeODM-shaped, and without data: only ``{"error": "..."}``."""
    assert answer.status in (200, 400, 401, 403, 404, 405, 429), answer
    body = answer.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str)
    for secret in secrets:
        assert secret not in answer.body.decode("utf-8", "replace"), answer


def reported(a: Attack) -> list[str]:
    """The requests of the report, for both set-ups."""
    ua, ub = a.uuids["a"], a.uuids["b"]
    dl = f"/task/{ua}/download/"
    return [
        "/.%2E/task/list%3F.js",
        f"/.%2E/task/{ub}/download/all.zip%3F.js",
        "/info%3F.js",
        f"/task/{ub}/info%3F.js",
        f"/.%2E/task/{ub}/info%3F.js",
        f"{dl}..%2F..%2F{ub}%2Finfo",
        f"{dl}..%2F..%2F{ub}%2Fdownload%2Fall.zip",
        f"{dl}..%2F..%2Flist",
        f"{dl}..%2F..%2F..%2Finfo",
        f"{dl}all.zip%3Ftoken%3Dx",
        f"{dl}all.zip%23",
        f"{dl}all%2Ezip",
    ]


def corpus(a: Attack) -> list[str]:
    """Traversal from the root, from a UI folder and from an asset name, to the list, the
    node's info, and user b's task; each dot/separator pair once, suffixes in turn."""
    ub = a.uuids["b"]
    targets = ["task/list", "info", f"task/{ub}/info", f"task/{ub}/download/all.zip"]
    starts = ["/", "/js/", f"/task/{a.uuids['a']}/download/"]
    out = []
    pairs = itertools.product(DOTS, SEPS, starts)
    for i, (dots, sep, start) in enumerate(pairs):
        target = targets[i % len(targets)]
        suffix = SUFFIXES[i % len(SUFFIXES)]
        up = (dots + sep) * 3
        out.append(start + up + target.replace("/", sep) + suffix)
    return out


def with_token(target: str, token: str) -> str:
    return target + ("&" if "?" in target else "?") + f"token={token}"


def secrets_of(a: Attack) -> list[str]:
    """What must never come back to a request that was refused: user b's uuid (in ``--users``
    the request comes from a, who may not know it; with one token, b's task is another
    route than the one asked for) and the zip signature of a result."""
    return [a.uuids["b"], "PK\x03\x04"]


async def test_reported_requests_are_refused(attack: Attack) -> None:
    for target in reported(attack):
        refused(await attack.send(target), *secrets_of(attack))
        refused(await attack.send(with_token(target, attack.token("a"))), *secrets_of(attack))


async def test_traversal_corpus_is_refused(attack: Attack) -> None:
    targets = corpus(attack)
    assert len(targets) == len(DOTS) * len(SEPS) * 3
    for target in targets:
        refused(await attack.send(target), *secrets_of(attack))
        refused(await attack.send(with_token(target, attack.token("a"))), *secrets_of(attack))


async def test_raw_bytes_in_the_path_are_refused(attack: Attack) -> None:
    """Bytes a client library would escape: backslashes, overlong UTF-8, NUL, a raw ``#``."""
    ub = attack.uuids["b"]
    raw = [
        b"/..\\..\\task\\list",
        b"/\xc0\xae\xc0\xae/task/list",
        f"/task/{ub}/info#.js".encode(),
        b"/info\x00.js",
        b"/js/../task/list",
        f"/task/{attack.uuids['a']}/download/../../{ub}/info".encode(),
    ]
    for path in raw:
        status, body = await raw_request(attack, b"GET " + path + b" HTTP/1.1")
        assert status in (400, 401, 404), (path, status, body)
        assert ub.encode() not in body or (status == 400 and path.startswith(b"/task/")), body
        assert b"PK\x03\x04" not in body


async def raw_request(a: Attack, request_line: bytes) -> tuple[int, bytes]:
    """One request on its own connection, bytes as given; the status and the body."""
    return await a.send_raw(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")


async def test_the_owners_own_requests_still_work(attack: Attack) -> None:
    ua, tok = attack.uuids["a"], attack.token("a")
    info = await attack.send(f"/task/{ua}/info?token={tok}&with_output=0")
    assert info.status == 200 and info.json()["uuid"] == ua
    zipped = await attack.send(f"/task/{ua}/download/all.zip?token={tok}")
    assert zipped.status == 200 and zipped.body.startswith(b"PK")
    if attack.mode == "users":  # b's task, asked for by a, by its own path
        other = await attack.send(f"/task/{attack.uuids['b']}/info?token={tok}")
        refused(other, '"processingTime"')
        listed = (await attack.send(f"/task/list?token={tok}")).json()
        assert listed == [{"uuid": ua}]
    assert (await attack.send("/task/list")).status == 401


async def test_only_the_web_ui_files_are_public(attack: Attack) -> None:
    """The node's UI files without a token (the real node has them); nothing else."""
    for target in ("/task/list.js", "/info.js", "/task/x/info.css", "/js/../info", "/x.png"):
        refused(await attack.send(target), *secrets_of(attack))
    for method in ("POST", "PUT", "DELETE"):
        refused(await attack.send("/js/main.js", method))
    if attack.node_kind == "real":  # the simulated node has no web UI
        for target in ("/", "/index.html", "/js/main.js", "/css/main.css", "/img/loading.gif"):
            ui = await attack.send(target + "?token=wrong")
            assert ui.status == 200 and len(ui.body) > 100, (target, ui)
