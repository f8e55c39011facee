"""Answers the cluster makes itself (``/info``, ``/options``), kept as bytes until what they are
made of changes.

``/info`` is what clients poll to choose a node and ``/options`` is a list of a hundred options
whose JSON costs far more than answering it; both depend only on the user's limits and on the
reference node's state (its engine, its option list). Each body is built once per user's limits
and kept with the state it was built from; a request whose state differs (the reference node
changed, its options were fetched again, the users file was reloaded) builds it again. The
answer is then one ``web.Response`` around bytes already made, as ``web.json_response`` would
have made them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from clusterodm.access.base import Limits

__all__ = ["AnswerCache", "json_bytes_response"]

#: entries kept (one per distinct limits object); more, and the cache starts over
MAX_ENTRIES = 1024


def json_bytes_response(body: bytes) -> web.Response:
    """What ``web.json_response`` answers, for a body already encoded."""
    return web.Response(body=body, content_type="application/json", charset="utf-8")


class AnswerCache:
    """JSON bodies per user's limits, each kept with the state (``source``) it was built from.

    Keyed by the limits object's identity (limits hold a dict, so they do not hash): the entry
    keeps that object alive, so its id cannot be reused by another while the entry exists, and a
    reloaded users file brings new objects, hence new entries.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[int, tuple[Limits, object, bytes]] = {}
        #: bodies built (for tests: how often the cache was missed)
        self.built = 0

    def body(self, limits: Limits, source: object, build: Callable[[], Any]) -> bytes:
        """The JSON of ``build()`` for ``limits``; built again only when ``source`` (compared
        with ``==``; identical objects match at once) differs from what it was built from."""
        entry = self._entries.get(id(limits))
        if entry is not None and entry[0] is limits:
            if entry[1] is source:
                return entry[2]
            if entry[1] == source:
                # equal state, another object (a list fetched again): compare by identity next
                self._entries[id(limits)] = (limits, source, entry[2])
                return entry[2]
        body = json.dumps(build()).encode()
        self.built += 1
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[id(limits)] = (limits, source, body)
        return body

    def clear(self) -> None:
        self._entries.clear()
