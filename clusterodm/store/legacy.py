"""One-time import of the original ClusterODM's ``data/nodes.json`` and ``data/routes.json``.

Lets an operator point this release at the original's data folder and keep its node list and the
uuid -> node routes of tasks already running. Runs once per store: the marker ``legacy_imported``
in the store's meta area stops a second import; the files themselves are left untouched, so the
original can still be started on them. Imports only the ``Store`` protocol, ``model`` and the
standard library.

A file that cannot be used whole (unreadable, not JSON, e.g. empty or truncated by a crash of
the original during its shutdown save, or not the expected shape) stops start-up with one line
naming the file and, for bad JSON, the line and column: importing what is left would mark the
import done and the file would never be read again once fixed. Nothing is marked then, and
nothing is marked while neither file exists, so a ``nodes.json`` written before a later start
(the original's way to pre-populate nodes) is still picked up then. Single bad entries in a
good file are reported and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from clusterodm.errors import StartupError
from clusterodm.model import Node, NodeInfo, Route, node_key
from clusterodm.nodes.address import BadAddress, check_hostname, check_port
from clusterodm.store.base import Store

log = logging.getLogger(__name__)

MARKER_KEY = "legacy_imported"
NODES_FILE = "nodes.json"
ROUTES_FILE = "routes.json"


async def import_legacy(data_dir: Path, store: Store) -> tuple[int, int]:
    """Import the original's state files once; returns (nodes imported, routes imported).
    StartupError (nothing imported, nothing marked) when a file is there but unusable."""
    if await store.get_meta(MARKER_KEY) is not None:
        return (0, 0)
    nodes_path, routes_path = data_dir / NODES_FILE, data_dir / ROUTES_FILE
    raw_nodes = await asyncio.to_thread(_read_json, nodes_path)
    raw_routes = await asyncio.to_thread(_read_json, routes_path)
    if raw_nodes is _MISSING and raw_routes is _MISSING:
        return (0, 0)
    nodes = _parse_nodes(raw_nodes, nodes_path)
    routes = _parse_routes(raw_routes, routes_path)
    for node in nodes:
        await store.put_node(node)
    await store.put_routes(routes)
    _warn_orphans(routes, {node.key for node in await store.list_nodes()}, routes_path)
    await store.set_meta(MARKER_KEY, json.dumps({"nodes": len(nodes), "routes": len(routes)}))
    log.info("imported %d nodes and %d routes from %s", len(nodes), len(routes), data_dir)
    return (len(nodes), len(routes))


class _NoData:
    """Stands for a file that is not there (``_MISSING``)."""


_MISSING = _NoData()
FIX = "fix or remove the file, then start again"


def _read_json(path: Path) -> Any:
    """Parsed content, ``_MISSING`` if absent; StartupError if unreadable or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _MISSING
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"{path}: cannot read it ({reason}); {FIX}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        what = "empty" if not text.strip() else f"not valid JSON ({exc.msg})"
        raise StartupError(f"{path}:{exc.lineno}:{exc.colno}: {what}; {FIX}") from None
    except ValueError as exc:
        raise StartupError(f"{path}: not valid JSON ({exc}); {FIX}") from None


def _parse_nodes(data: Any, path: Path) -> list[Node]:
    if isinstance(data, _NoData):
        return []
    if not isinstance(data, list):
        raise StartupError(f"{path}: not a list of nodes; {FIX}")
    nodes: list[Node] = []
    for index, entry in enumerate(data):
        try:
            nodes.append(_node_from_legacy(entry))
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("%s: skipping node #%d (%s): %.120r", path, index + 1, exc, entry)
    return nodes


def _node_from_legacy(entry: dict[str, Any]) -> Node:
    """Original shape: ``port`` as a string, ``locked`` only when set, ``dockerMachine`` for
    auto-spawned nodes (kept as the machine record)."""
    hostname, port = _address(entry)
    machine = entry.get("dockerMachine")
    return Node(
        hostname=hostname,
        port=port,
        token=str(entry.get("token") or ""),
        locked=bool(entry.get("locked", False)),
        info=_info(entry.get("info")),
        last_refreshed_ms=int(entry.get("lastRefreshed") or 0),
        machine=dict(machine) if isinstance(machine, dict) else None,
    )


def _address(entry: dict[str, Any]) -> tuple[str, int]:
    """The host and port of a node entry, as a node added today would be stored: a route's
    node is named exactly as the node list names it (``[0:0::1]`` and ``[::1]`` are one node)."""
    try:
        hostname = check_hostname(str(entry["hostname"]))
        port = check_port(entry["port"] if isinstance(entry["port"], int) else str(entry["port"]))
    except BadAddress as e:
        raise ValueError(e.message) from None
    return hostname, port


def _info(value: Any) -> NodeInfo | None:
    """The original's last ``/info``; unusable ones are dropped (the first refresh refills it)."""
    if not isinstance(value, dict) or not value:
        return None
    try:
        return NodeInfo.from_json(value)
    except (TypeError, ValueError):
        return None


def _parse_routes(data: Any, path: Path) -> list[Route]:
    if isinstance(data, _NoData):
        return []
    if not isinstance(data, dict):
        raise StartupError(f"{path}: not a map of task uuids to routes; {FIX}")
    routes: list[Route] = []
    for uuid, entry in data.items():
        try:
            routes.append(_route_from_legacy(str(uuid), entry))
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("%s: skipping route %s (%s)", path, uuid, exc)
    return routes


def _route_from_legacy(uuid: str, entry: dict[str, Any]) -> Route:
    """``{node: {hostname, port, token}, token?, accessed}``; the node token is not kept here."""
    return Route(
        uuid=uuid,
        node_key=node_key(*_address(entry["node"])),
        owner=str(entry.get("token") or ""),
        accessed_ms=int(entry.get("accessed") or 0),
    )


def _warn_orphans(routes: list[Route], known: set[str], path: Path) -> None:
    """Routes to unknown nodes are kept (the node may be added again) but worth a look."""
    counts = Counter(route.node_key for route in routes)
    for key in sorted(counts.keys() - known):
        log.warning(
            "%s: %d routes point at node %s, which is not in the node list", path, counts[key], key
        )
