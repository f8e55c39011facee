"""``/info`` and ``/options`` served from bytes kept until their state changes."""

from __future__ import annotations

import json

import aiohttp

from clusterodm import API_VERSION
from clusterodm.access.base import Limits
from clusterodm.model import NodeInfo
from clusterodm.proxy.answers import AnswerCache
from tests.conftest import ClusterFactory, SimnodeFactory


def test_a_body_is_built_again_only_when_its_state_or_limits_change() -> None:
    cache = AnswerCache()
    a, b = Limits(max_images=5), Limits(max_images=5)
    made: list[str] = []

    def build(tag: str) -> dict[str, str]:
        made.append(tag)
        return {"tag": tag}

    assert cache.body(a, ("odm", "1"), lambda: build("a1")) == b'{"tag": "a1"}'
    assert cache.body(a, ("odm", "1"), lambda: build("again")) == b'{"tag": "a1"}'
    # equal limits but another object (another user, or a reloaded users file): its own entry
    assert cache.body(b, ("odm", "1"), lambda: build("b1")) == b'{"tag": "b1"}'
    assert cache.body(a, ("odm", "2"), lambda: build("a2")) == b'{"tag": "a2"}'
    assert made == ["a1", "b1", "a2"] and cache.built == 3
    small = AnswerCache(max_entries=2)
    kept = [Limits() for _ in range(5)]
    for i, limits in enumerate(kept):
        small.body(limits, (), lambda i=i: i)  # type: ignore[misc]
    assert len(small._entries) <= 2
    assert small.body(kept[-1], (), lambda: "rebuilt") == b"4"


async def test_info_and_options_are_built_once_and_answer_as_before(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    d = cluster.deps
    ref = d.registry.reference()
    assert ref is not None and ref.info is not None
    # the figures the original reports for the cluster as a whole
    expected_info = {
        "version": API_VERSION,
        "taskQueueCount": 0,
        "totalMemory": 99_999_999_999,
        "availableMemory": 99_999_999_999,
        "cpuCores": 99_999_999_999,
        "maxImages": None,
        "maxParallelTasks": 99_999_999_999,
        "engineVersion": ref.info.engine_version,
        "engine": ref.info.engine,
    }
    async with aiohttp.ClientSession() as s:
        direct = await (await s.get(f"{sim.url}/options")).json()
        for _ in range(3):
            r = await s.get(f"{cluster.url}/info", headers={"Origin": "http://app.example"})
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            assert r.headers["Access-Control-Allow-Origin"] == "http://app.example"
            body = await r.read()
            # the same bytes web.json_response made
            assert body == json.dumps(expected_info).encode()
            r = await s.get(f"{cluster.url}/options")
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert await r.json() == direct
        assert d.info_bodies.built == 1
        assert d.options_bodies.built == 1
        # the node's list fetched again, the same: the same body
        assert (await (await s.post(f"{cluster.url}/cache/clear")).json()) == {"success": True}
        assert await (await s.get(f"{cluster.url}/options")).json() == direct
        assert d.options_bodies.built == 1
        # the reference node's engine changes: /info follows at once
        await d.registry.record_info(ref.key, NodeInfo(version="2.2.4", engine_version="9.9.9"))
        info = await (await s.get(f"{cluster.url}/info")).json()
        assert info["engineVersion"] == "9.9.9"
        assert d.info_bodies.built == 2
