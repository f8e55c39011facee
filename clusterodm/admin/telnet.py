"""Admin CLI: the original's line protocol over plain TCP (telnet, ``nc``), on ``--admin-cli-port``.

Owns the wire: greeting, ``LOGIN``, prompts, line framing, ``!!``, every line ending in CRLF, and
the limits that keep the CLI from hurting the proxy that shares its event loop. What a command
does and which reply it gets lives in ``cli_commands.py`` (reply codes as the original's).

Deliberate differences from the original, all compatible with scripts that parse its replies:

- original: each TCP read is one command, so two lines in one packet garble; here input is split
  into lines (CRLF or LF) and every line is one command, answered in order. The session yields
  to the event loop after every line, so a flood of lines in one write (200,000 ``\n``) never
  delays the proxy's HTTP.
- original: any input before ``LOGIN`` closes the connection; here only a wrong password does
  (logged with the peer), anything else is answered with a hint, up to ``PRE_LOGIN_LINES``
  lines.
- original: a client that leaves mid-command logs an uncaught EPIPE; here it is a debug line.
- original: an empty line answers ``INVALID``; here it just prompts again.
- Lines longer than ``LINE_LIMIT_BYTES`` answer ``INVALID`` and are discarded; the connection
  stays usable.
- Limits (none in the original), so admins can always get in: at most ``max_connections``
  sessions, ``max_per_address`` from one address; idle sessions are closed after
  ``idle_timeout_s`` (``--admin-cli-idle-timeout``), sessions not logged in after
  ``LOGIN_TIMEOUT_S``. A connection over a limit takes the place of the longest-idle session of
  its own address (per-address limit) or of the address holding the most sessions (total
  limit); only when no session can give way is it refused.

Imports ``admin.cli_commands`` and ``admin.commands`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from typing import Any

from clusterodm import __version__
from clusterodm.admin.cli_commands import FAIL, INVALID, OK, execute
from clusterodm.admin.commands import NAME, AdminCommands
from clusterodm.compat import timeout

log = logging.getLogger(__name__)

LINE_LIMIT_BYTES = 64 * 1024
READ_CHUNK_BYTES = 16 * 1024
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 8
"""Default for ``--admin-cli-max-per-address``."""
LOGIN_TIMEOUT_S = 60.0
"""A connection that has not logged in by then is closed (it holds a connection slot)."""
IDLE_TIMEOUT_S = 3600.0
"""Default for ``--admin-cli-idle-timeout``: a logged-in session silent this long is closed."""
PRE_LOGIN_LINES = 100
"""Lines answered before LOGIN; then the connection is closed (the original closes at once)."""
FLUSH_BYTES = 64 * 1024
"""Queued replies are written out at this size even while more input is buffered."""
WRITE_TIMEOUT_S = 30.0
"""A client that stops reading its replies is dropped rather than buffered forever."""

CLOSE_GRACE_S = 2.0
"""On shutdown, sessions in the middle of a command get this long before they are cancelled."""

CRLF = "\r\n"
PROMPT = "#> "
LOGIN_PROMPT = "$> "
TOO_MANY = "Too many admin connections, try again later"
EVICTED = "Closed: too many admin connections"


class TooLong:
    """Marker for a line over the limit (already discarded)."""


TOO_LONG = TooLong()


class LineReader:
    """Splits a byte stream into lines with a hard length limit, without ever buffering more.

    ``asyncio.StreamReader.readline`` drops a too-long line's head and then hands its tail back
    as if it were a new line; here the rest of an overlong line is skipped up to its newline.
    """

    def __init__(self, reader: asyncio.StreamReader, limit: int = LINE_LIMIT_BYTES) -> None:
        self._reader = reader
        self._limit = limit
        self._buf = bytearray()
        self._discarding = False
        self._eof = False

    def has_line(self) -> bool:
        """A whole line (or the end of input) is buffered: ``next_line`` will not wait."""
        return self._eof or b"\n" in self._buf

    async def next_line(self) -> bytes | TooLong | None:
        """The next line without its CR/LF, ``TOO_LONG``, or None at end of input."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                if self._discarding or len(line) > self._limit:
                    self._discarding = False
                    return TOO_LONG
                return line.rstrip(b"\r")
            if len(self._buf) > self._limit:
                self._buf.clear()
                self._discarding = True
            if self._eof:
                if self._discarding:
                    self._discarding = False
                    return TOO_LONG
                if self._buf:
                    line = bytes(self._buf).rstrip(b"\r")
                    self._buf.clear()
                    return line
                return None
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            if not chunk:
                self._eof = True
            self._buf += chunk


def password_matches(given: str, expected: str) -> bool:
    """Constant-time, so response timing does not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class Session:
    """One admin connection: login state, last command, and the read-eval-print loop."""

    def __init__(
        self,
        cmds: AdminCommands,
        password: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.cmds = cmds
        self.password = password
        self.lines = LineReader(reader)
        self.writer = writer
        self.idle_timeout_s = idle_timeout_s
        self.logged_in = not password
        self.last = ""
        self.peer = _peer_name(writer)
        self.address = _peer_address(writer)
        #: waiting for input since (monotonic); None while a line is being answered
        self.idle_since: float | None = time.monotonic()
        self.task: asyncio.Task[Any] | None = None
        self._pre_login = 0
        self._out = bytearray()

    def evict(self) -> None:
        """Say why and close the connection; ``run`` then sees the end of input and returns."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write((EVICTED + CRLF).encode())
        self.writer.close()

    async def send(self, lines: list[str], prompt: bool = False) -> None:
        """Queue reply lines; they go out when no more input is buffered (one write for a
        packet of many lines, not one system call per line) or when the queue is large."""
        text = "".join(line + CRLF for line in lines)
        if prompt:
            text += PROMPT if self.logged_in else LOGIN_PROMPT
        self._out += text.encode("utf-8")
        if len(self._out) >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if not self._out:
            return
        self.writer.write(bytes(self._out))
        self._out.clear()
        async with timeout(WRITE_TIMEOUT_S):
            await self.writer.drain()

    async def run(self) -> None:
        """The session, then whatever replies are still queued."""
        try:
            await self._serve()
        finally:
            with contextlib.suppress(
                ConnectionError, TimeoutError, asyncio.TimeoutError, RuntimeError
            ):
                await self.flush()

    async def _serve(self) -> None:
        # the original's greeting, word for word, so scripts that wait for it keep working
        greeting = [f"Welcome {self.peer} {NAME}:{__version__}"]
        greeting.append("LOGIN <password> to log-in" if self.password else "HELP for help")
        greeting.append("QUIT to quit")
        await self.send(greeting, prompt=True)
        while True:
            if self.logged_in:
                timeout_s = self.idle_timeout_s
            else:
                timeout_s = min(LOGIN_TIMEOUT_S, self.idle_timeout_s)
            if self.lines.has_line():
                raw = await self.lines.next_line()  # buffered: no wait, no timer
            else:
                await self.flush()  # about to wait for the client: answer what it sent
                self.idle_since = time.monotonic()
                try:
                    async with timeout(timeout_s):
                        raw = await self.lines.next_line()
                except (TimeoutError, asyncio.TimeoutError):
                    log.debug("admin CLI: %s idle for %.0f s, closed", self.peer, timeout_s)
                    await self.send(["Timed out"])
                    return
                self.idle_since = None
            if raw is None:
                return
            if isinstance(raw, TooLong):
                await self.send(INVALID, prompt=True)
            elif not await self.handle(raw.decode("utf-8", errors="replace").strip()):
                return
            # lines already buffered are answered without awaiting the socket: let the rest of
            # the process (the proxy's HTTP) run between any two of them
            await asyncio.sleep(0)

    async def handle(self, text: str) -> bool:
        """Answer one line; False when the connection must close."""
        if not self.logged_in:
            self._pre_login += 1
            if self._pre_login > PRE_LOGIN_LINES:
                log.info("admin CLI: %s sent too many lines before LOGIN, closed", self.peer)
                await self.send(["LOGIN <password> first"])
                return False
        if not text:
            await self.send([], prompt=True)
            return True
        if text == "!!":
            if not self.last:
                await self.send(INVALID, prompt=True)
                return True
            text = self.last
        verb = text.split(maxsplit=1)[0].upper()
        if verb == "QUIT":
            await self.send(["Bye!"])
            return False
        if verb == "LOGIN":
            return await self.login(text)
        if not self.logged_in:
            await self.send(["LOGIN <password> first"], prompt=True)
            return True
        self.last = text
        await self.send(await execute(self.cmds, text), prompt=True)
        return True

    async def login(self, text: str) -> bool:
        if self.logged_in:
            await self.send(OK, prompt=True)
            return True
        parts = text.split(maxsplit=1)
        given = parts[1] if len(parts) > 1 else ""
        if not password_matches(given, self.password):
            log.warning("admin CLI: wrong password from %s, connection closed", self.peer)
            await self.send(FAIL)
            return False
        self.logged_in = True
        log.info("admin CLI: %s logged in", self.peer)
        await self.send(["OK", "HELP for help"], prompt=True)
        return True


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _peer_address(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


class AdminCli:
    """The listening server and its sessions; ``close()`` ends them all."""

    def __init__(
        self,
        cmds: AdminCommands,
        password: str = "",
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_per_address: int = MAX_PER_ADDRESS,
    ) -> None:
        self.cmds = cmds
        self.password = password
        self.idle_timeout_s = idle_timeout_s
        self.max_per_address = max_per_address
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()
        self._open: set[Session] = set()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connected, host or None, port)
        log.info("admin CLI listening on port %d", self.port)
        if not self.password:
            log.warning(
                "admin CLI has no password (--admin-pass): keep port %d on a trusted network",
                self.port,
            )

    def _make_room(self, address: str) -> bool:
        """Room for one more session from ``address``: free, or made by closing the longest-idle
        session of that address (over its own limit) or of the address with the most
        sessions (total limit). False when no session can give way."""
        mine = [s for s in self._open if s.address == address]
        if len(mine) >= self.max_per_address:
            pool = mine
        elif len(self._open) >= MAX_CONNECTIONS:
            counts: dict[str, int] = {}
            for s in self._open:
                counts[s.address] = counts.get(s.address, 0) + 1
            most = max(counts.values())
            if most < 2:
                return False
            pool = [s for s in self._open if counts[s.address] == most]
        else:
            return True
        idle = [s for s in pool if s.idle_since is not None and s.task is not None]
        if not idle:
            return False
        # not logged in first, then the longest idle
        victim = min(idle, key=lambda s: (s.logged_in, s.idle_since))
        log.info("admin CLI: closing idle %s to admit %s", victim.peer, address)
        self._open.discard(victim)
        victim.evict()
        return True

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        session: Session | None = None
        try:
            session = Session(self.cmds, self.password, reader, writer, self.idle_timeout_s)
            if task is None or not self._make_room(session.address):
                log.warning("admin CLI: too many connections, refusing %s", session.peer)
                writer.write((TOO_MANY + CRLF).encode())
                return
            session.task = task
            self._sessions.add(task)
            self._open.add(session)
            await session.run()
        except (ConnectionError, TimeoutError, asyncio.TimeoutError) as e:
            log.debug("admin CLI: connection ended: %r", e)
        finally:
            if task is not None:
                self._sessions.discard(task)
            if session is not None:
                self._open.discard(session)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, asyncio.TimeoutError):
                async with timeout(1.0):
                    await writer.wait_closed()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for session in list(self._open):
            session.writer.close()  # idle sessions see the end of input and return
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=CLOSE_GRACE_S)
        for task in list(self._sessions):
            task.cancel()  # one still in the middle of a command
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None


async def start_cli(
    cmds: AdminCommands,
    host: str,
    port: int,
    password: str = "",
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    max_per_address: int = MAX_PER_ADDRESS,
) -> AdminCli:
    """Start the admin CLI on ``port`` (0 = any free port: read ``.port``)."""
    cli = AdminCli(cmds, password, idle_timeout_s, max_per_address)
    await cli.start(host, port)
    return cli
