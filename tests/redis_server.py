"""A real redis-server on a free loopback port, for the tests that need Redis.

``redis_server_or_skip()`` starts one (no persistence, so nothing is written to disk) and waits
for its PING, bounded. Without the binary (Debian: ``apt-get install redis-server``) the caller
is skipped with that reason locally and failed under ``CI=true``, where a missing server means a
broken CI script rather than a developer's machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field

import pytest

from tests.helpers import wait_until

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """One inline PING; True on ``+PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def flush_all(port: int, timeout_s: float = 5.0) -> None:
    """Empty every database of the server (between tests; the server stays up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(b"FLUSHALL\r\n")
        reply = s.recv(64)
    if not reply.startswith(b"+OK"):
        raise RuntimeError(f"FLUSHALL answered {reply!r}")


@dataclass
class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep the same port."""

    binary: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)  # e.g. persistence for restart tests

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        args += self.extra_args
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        process = self.process
        try:
            wait_until(
                lambda: ping(self.port) or process.poll() is not None,
                timeout_s=START_TIMEOUT_S,
                message="redis-server PONG",
            )
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(str(exc)) from None
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            self.stop()
            raise RuntimeError(f"redis-server exited with {process.returncode}: {err}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        if process.stderr is not None:
            process.stderr.close()


def redis_server_or_skip() -> RedisServer:
    """A started server; skips (locally) or fails (``CI=true``) when Redis is not installed."""
    binary = shutil.which("redis-server")
    missing = None
    if binary is None:
        missing = "redis-server is not installed (Debian: apt-get install redis-server)"
    else:
        try:
            import redis  # noqa: F401
        except ImportError:
            missing = "redis-py is not installed (pip install -e '.[test]')"
    if missing is not None or binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must install it", pytrace=False)
        pytest.skip(str(missing))
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between probing and binding: try another
        server = RedisServer(binary)
        try:
            server.start()
        except RuntimeError as exc:
            last = exc
            continue
        return server
    raise RuntimeError(f"could not start redis-server: {last}")
