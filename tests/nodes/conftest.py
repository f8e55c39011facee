"""Fixtures of the node tests: a real DNS server on loopback for discovery."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dns_server import LoopbackDns


@pytest.fixture
def dns() -> Iterator[LoopbackDns]:
    server = LoopbackDns()
    yield server
    server.stop()
