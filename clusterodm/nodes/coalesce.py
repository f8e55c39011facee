"""Coalescing: identical requests arriving together become one request to the node.

A client library polls ``/task/<uuid>/info`` about once a second per task, and a dashboard or a
crowd of clients may poll the same task at once. Each identical poll (same node, same path and
query, same headers) arriving while one is already in flight waits for that one's answer instead
of sending its own, so a thousand pollers of one task cost the node one request per round trip
rather than a thousand.

The answer is shared only by the callers that were waiting for it: once it has arrived the entry
is gone, and the next caller asks the node again. Nothing is kept, so nothing can be served after
the moment it was fetched for. Who may see the answer is decided before this point, per caller
(the proxy checks each poller's token and ownership before asking the node), and the key holds
the request as sent to the node, so two requests that differ in anything the node sees are never
merged.

If the caller that is fetching is cancelled (its client went away), the waiters do not inherit the
cancellation: one of them fetches again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

V = TypeVar("V")


class _LeaderGone(Exception):
    """The caller that was fetching was cancelled; a waiter fetches instead."""


class Coalescer(Generic[V]):
    """One call of ``fetch`` in flight per key; callers arriving meanwhile share its outcome
    (answer or exception)."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}
        #: callers waiting for another's answer now
        self.waiting = 0

    @property
    def in_flight(self) -> int:
        """Keys being fetched now."""
        return len(self._inflight)

    async def run(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        inflight = self._inflight
        while (shared := inflight.get(key)) is not None:
            self.waiting += 1
            try:
                # shielded: a waiter that is cancelled must not cancel the others' answer
                return await asyncio.shield(shared)
            except _LeaderGone:
                continue
            finally:
                self.waiting -= 1
        shared = asyncio.get_running_loop().create_future()
        inflight[key] = shared
        try:
            value = await fetch()
        except asyncio.CancelledError:
            _fail(shared, _LeaderGone())
            raise
        except BaseException as e:
            _fail(shared, e)
            raise
        else:
            shared.set_result(value)
            return value
        finally:
            if inflight.get(key) is shared:
                del inflight[key]


def _fail(shared: asyncio.Future[V], error: BaseException) -> None:
    shared.set_exception(error)
    shared.exception()  # retrieved: no "exception was never retrieved" when nobody waited
