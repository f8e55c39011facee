"""Fixtures of the node tests: a real DNS server on loopback for discovery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.admin.test_web import browser  # noqa: F401  (Chromium, for the admin page test)

if TYPE_CHECKING:
    from tests.dns_server import LoopbackDns


@pytest.fixture
def dns() -> Iterator[LoopbackDns]:
    """A dnslib server on 127.0.0.1:<free port> (dnslib comes with the ``test`` extra)."""
    pytest.importorskip("dnslib", reason="dnslib serves the test DNS zone: pip install -e .[test]")
    from tests.dns_server import LoopbackDns

    server = LoopbackDns()
    yield server
    server.stop()
