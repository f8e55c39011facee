"""The paths the cluster asks a node for: fixed templates filled with checked parts.

A node is only ever asked for one of NodeODM's own routes or one of its web UI's static files.
Each path is built here from its parts, and each part is checked before it goes in: a uuid as a
uuid, an asset name against the names NodeODM serves, a UI file against the shape of the files
in NodeODM's ``public/`` folder. A part that fails raises ``ValueError`` (``BadNodePath``), so a
name such as ``../../<other uuid>/info`` or ``all.zip?token=x`` can never become another route
of the node, whatever the HTTP edge let through. Query parameters are chosen per route by the
caller from an allow-list (``QUERY_ALLOWED``); ``NodeClient.url`` puts the node token on.

Must not import the HTTP edge.
"""

from __future__ import annotations

import re
from typing import Final

from yarl import URL

__all__ = [
    "ASSETS",
    "QUERY_ALLOWED",
    "TASK_ACTIONS",
    "BadNodePath",
    "NodePath",
    "check_uuid",
    "download",
    "fixed",
    "is_ui_file",
    "task",
    "task_action",
    "ui_file",
    "upload",
]

UUID_SHAPE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
#: what NodeODM serves under ``/task/<uuid>/download/``: all.zip (``Task.getAssetsArchivePath``)
#: and the single files that results kept in S3 are known by (``results.ASSET_PATHS``)
ASSETS: Final = frozenset({"all.zip", "orthophoto.tif"})
NODE_ASSETS: Final = frozenset({"all.zip"})
TASK_ACTIONS: Final = frozenset({"cancel", "remove", "restart"})
#: the routes of a node that take no part, as the client calls them
FIXED: Final = frozenset(
    {"/info", "/options", "/task/list", "/task/new", "/task/new/init", "/auth/info"}
)
#: per route, the query parameters passed on to the node; every other one (the client's token
#: included: the node token replaces it) stays in the proxy
QUERY_ALLOWED: Final[dict[str, frozenset[str]]] = {
    "info": frozenset({"with_output"}),
    "output": frozenset({"line"}),
    "download": frozenset(),
    "ui": frozenset(),
}

#: NodeODM's web UI: ``/``, ``/index.html`` and the files under ``css/ js/ fonts/ img/ themes/``
#: (at most three folders deep there), with the extensions those folders hold
_UI_FILE: Final = re.compile(
    r"/(?:index\.html|(?:css|js|fonts|img|themes)"
    r"(?:/[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}){1,3}"
    r"(?<=\.css|\.map|\.eot|\.ttf|\.svg|\.png|\.gif|\.ico)"
    r")",
)
_UI_FILE_JS: Final = re.compile(
    r"/(?:js|themes)(?:/[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}){1,3}\.js"
    r"|/fonts/[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}\.woff2?"
)


class BadNodePath(ValueError):
    """A part that cannot go into a node's path."""


class NodePath(str):
    """A path checked by this module; ``NodeClient.url`` takes nothing else."""

    __slots__ = ()

    @property
    def segments(self) -> list[str]:
        return self.split("/")[1:]


def check_uuid(uuid: str) -> str:
    if not isinstance(uuid, str) or not UUID_SHAPE.fullmatch(uuid):
        raise BadNodePath(f"not a task uuid: {uuid!r:.80}")
    return uuid


def _build(*segments: str) -> NodePath:
    # yarl builds the path from its segments; each was checked to hold no separator or dot
    # segment, so the path is exactly the template's
    return NodePath(URL("/").joinpath(*segments).raw_path)


def fixed(path: str) -> NodePath:
    """One of the node's routes that takes no part: ``/info``, ``/task/list``, ..."""
    if path not in FIXED:
        raise BadNodePath(f"not a node route: {path!r:.80}")
    return _build(*path.split("/")[1:])


def task(uuid: str, what: str) -> NodePath:
    """``/task/<uuid>/info`` or ``/task/<uuid>/output``."""
    if what not in ("info", "output"):
        raise BadNodePath(f"not a task route: {what!r:.40}")
    return _build("task", check_uuid(uuid), what)


def download(uuid: str, asset: str) -> NodePath:
    """``/task/<uuid>/download/<asset>``, for the assets a node serves."""
    if asset not in NODE_ASSETS:
        raise BadNodePath(f"not an asset: {asset!r:.80}")
    return _build("task", check_uuid(uuid), "download", asset)


def upload(uuid: str) -> NodePath:
    return _build("task", "new", "upload", check_uuid(uuid))


def commit(uuid: str) -> NodePath:
    return _build("task", "new", "commit", check_uuid(uuid))


def task_action(action: str) -> NodePath:
    if action not in TASK_ACTIONS:
        raise BadNodePath(f"not a task action: {action!r:.40}")
    return _build("task", action)


def is_ui_file(path: str) -> bool:
    """Whether ``path`` (as sent, still encoded) is one of the node's web UI files."""
    return (
        path == "/"
        or _UI_FILE.fullmatch(path) is not None
        or _UI_FILE_JS.fullmatch(path) is not None
    )


def ui_file(path: str) -> NodePath:
    if not is_ui_file(path):
        raise BadNodePath(f"not a web UI file: {path!r:.80}")
    return NodePath(path) if path == "/" else _build(*path.split("/")[1:])
