"""Legacy import: the original's recorded data files land in the store exactly once."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterodm.errors import StartupError
from clusterodm.model import Route
from clusterodm.store.legacy import MARKER_KEY, import_legacy
from clusterodm.store.sqlite import SqliteStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "original"
ROUTE_UUIDS = ["78f14e5c-0d93-4196-843e-ebbf0f537676", "63d974f3-3c47-4933-90e6-9c4d38de11ba"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "db" / "clusterodm.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("nodes.json", "routes.json"):
        shutil.copy(FIXTURES / name, folder / name)
    return folder


async def test_recorded_files_import(data_dir: Path, store: SqliteStore) -> None:
    assert await import_legacy(data_dir, store) == (2, 2)
    first, second = await store.list_nodes()
    assert (first.hostname, first.port, first.token, first.locked) == ("127.0.0.1", 3921, "", False)
    assert (second.port, second.token, second.locked) == (3922, "nodetok", True)
    assert not first.auto_spawned
    routes = await store.list_routes()
    assert [r.uuid for r in routes] == ROUTE_UUIDS
    assert routes[0] == Route(ROUTE_UUIDS[0], "127.0.0.1:3921", "", 1795606118309)
    assert await store.get_meta(MARKER_KEY) is not None
    assert (data_dir / "nodes.json").exists() and (data_dir / "routes.json").exists()


async def test_second_import_is_a_no_op(data_dir: Path, store: SqliteStore) -> None:
    await import_legacy(data_dir, store)
    await store.delete_node("127.0.0.1:3921")
    assert await import_legacy(data_dir, store) == (0, 0)
    assert [n.port for n in await store.list_nodes()] == [3922]
    assert await store.list_routes() == []


async def test_nothing_to_import_marks_nothing(tmp_path: Path, store: SqliteStore) -> None:
    assert await import_legacy(tmp_path / "absent", store) == (0, 0)
    assert await store.get_meta(MARKER_KEY) is None


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("", ":1:1: empty"),
        ('[\n  {"hostname": "a",\n', ":3:1: not valid JSON"),
        ("{}", ": not a list"),
    ],
)
async def test_unusable_nodes_file_stops_and_marks_nothing(
    data_dir: Path, store: SqliteStore, content: str, where: str
) -> None:
    good = (data_dir / "nodes.json").read_text()
    (data_dir / "nodes.json").write_text(content)
    with pytest.raises(StartupError) as caught:
        await import_legacy(data_dir, store)
    assert f"{data_dir / 'nodes.json'}{where}" in caught.value.message
    assert await store.get_meta(MARKER_KEY) is None
    assert await store.list_nodes() == [] and await store.list_routes() == []
    (data_dir / "nodes.json").write_text(good)  # fixed: imported at the next start
    assert await import_legacy(data_dir, store) == (2, 2)


async def test_corrupt_routes_file_stops_too(data_dir: Path, store: SqliteStore) -> None:
    (data_dir / "routes.json").write_text('{"78f1')
    with pytest.raises(StartupError, match=r"routes\.json:1:2: not valid JSON"):
        await import_legacy(data_dir, store)
    assert await store.get_meta(MARKER_KEY) is None
    assert await store.list_nodes() == []


async def test_routes_to_unknown_nodes_are_kept_with_a_warning(
    data_dir: Path, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    (data_dir / "nodes.json").unlink()
    with caplog.at_level(logging.WARNING, logger="clusterodm.store.legacy"):
        assert await import_legacy(data_dir, store) == (0, 2)
    assert "127.0.0.1:3921" in caplog.text
    assert {r.node_key for r in await store.list_routes()} == {"127.0.0.1:3921"}


async def test_auto_spawned_node_owner_token_and_bad_entries(
    tmp_path: Path, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    machine = {"name": "clusterodm-1-abc", "created": 1700000000000, "maxRuntime": -1}
    nodes = [
        {
            "hostname": "10.0.0.9",
            "port": 3000,
            "token": "m-tok",
            "dockerMachine": machine,
            "info": {"version": "2.2.4", "maxParallelTasks": 2, "maxImages": 500},
            "lastRefreshed": 1700000000123,
        },
        {"hostname": "bad", "port": "not-a-port"},
        {"port": "3000"},
    ]
    routes = {
        "u1": {"node": {"hostname": "10.0.0.9", "port": "3000", "token": "m-tok"}, "token": "own"},
        "u2": {"node": {"hostname": "10.0.0.9"}},
    }
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    (tmp_path / "routes.json").write_text(json.dumps(routes))
    with caplog.at_level(logging.WARNING, logger="clusterodm.store.legacy"):
        assert await import_legacy(tmp_path, store) == (1, 1)
    [node] = await store.list_nodes()
    assert node.machine == machine and node.auto_spawned
    assert node.info is not None and node.info.max_images == 500
    assert node.last_refreshed_ms == 1700000000123
    assert await store.get_route("u1") == Route("u1", "10.0.0.9:3000", "own", 0)
    assert "skipping node #2" in caplog.text and "skipping route u2" in caplog.text


async def test_nodes_with_unusable_addresses_are_skipped(
    tmp_path: Path, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The original accepted any host; such an entry is skipped with a warning, not imported."""
    entries = [{"hostname": h, "port": "3000"} for h in ("a\\b", "[::1", "a\u0085b", "h:1")]
    entries += [{"hostname": "ok", "port": p} for p in ("0", "3000x", "²")]
    entries += [{"hostname": "good", "port": "3000"}, {"hostname": "[::1]", "port": 3001}]
    (tmp_path / "nodes.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        assert (await import_legacy(tmp_path, store))[0] == 2
    assert sorted(n.key for n in await store.list_nodes()) == ["[::1]:3001", "good:3000"]
    assert caplog.text.count("skipping node") == 7


async def test_routes_name_their_node_as_the_node_list_does(
    tmp_path: Path, store: SqliteStore
) -> None:
    """The original kept host names as typed: a route to ``[0:0:0:0:0:0:0:1]`` or ``10.0.0.9.``
    points at the node imported as ``[::1]`` or ``10.0.0.9``, not at a node that is not there."""
    nodes = [
        {"hostname": "[0:0:0:0:0:0:0:1]", "port": "3000"},
        {"hostname": "10.0.0.9.", "port": 3001},
    ]
    routes = {
        "u1": {"node": {"hostname": "[0:0:0:0:0:0:0:1]", "port": "3000"}},
        "u2": {"node": {"hostname": "10.0.0.9.", "port": 3001}},
        "u3": {"node": {"hostname": "[::1", "port": 3000}},
    }
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    (tmp_path / "routes.json").write_text(json.dumps(routes))
    assert await import_legacy(tmp_path, store) == (2, 2)
    keys = {n.key for n in await store.list_nodes()}
    assert keys == {"[::1]:3000", "10.0.0.9:3001"}
    assert {r.node_key for r in await store.list_routes()} == keys
