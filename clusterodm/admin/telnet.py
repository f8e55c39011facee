"""Admin CLI: the original's line protocol over plain TCP (telnet, ``nc``), on ``--admin-cli-port``.

Owns the wire: greeting, ``LOGIN``, prompts, line framing, ``!!`` and the reply shapes
(``OK`` / ``FAIL`` / ``INVALID`` / pretty JSON / NODE LIST lines), every line ending in CRLF.
What a command does lives in ``commands.py``; this module only parses arguments and prints.

Deliberate differences from the original, all compatible with scripts that parse its replies:

- original: each TCP read is one command, so two lines in one packet garble; here input is split
  into lines (CRLF or LF) and every line is one command, answered in order.
- original: any input before ``LOGIN`` closes the connection; here only a wrong password does
  (logged with the peer), anything else is answered with a hint.
- original: a client that leaves mid-command logs an uncaught EPIPE; here it is a debug line.
- original: an empty line answers ``INVALID``; here it just prompts again.
- original: ``NODE INFO`` / ``ROUTE INFO`` / ``TASK *`` on an unknown node or task answer
  ``INVALID``; here ``FAIL`` (the arguments were well-formed, the target is missing), and
  ``TASK CANCEL`` / ``TASK REMOVE`` answer ``OK`` / ``FAIL`` instead of the node's raw JSON.
- Lines longer than ``LINE_LIMIT_BYTES`` answer ``INVALID`` and are discarded; the connection
  stays usable. At most ``MAX_CONNECTIONS`` sessions at once, and idle sessions time out, so
  admin clients cannot starve the proxy sharing this event loop.

Imports ``admin.commands`` and the error families only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from clusterodm import __version__
from clusterodm.admin.commands import NAME, AdminCommands
from clusterodm.errors import ClusterError

log = logging.getLogger(__name__)

LINE_LIMIT_BYTES = 64 * 1024
READ_CHUNK_BYTES = 16 * 1024
MAX_CONNECTIONS = 64
LOGIN_TIMEOUT_S = 60.0
"""A connection that has not logged in by then is closed (it holds a connection slot)."""
IDLE_TIMEOUT_S = 3600.0
WRITE_TIMEOUT_S = 30.0
"""A client that stops reading its replies is dropped rather than buffered forever."""

CRLF = "\r\n"
PROMPT = "#> "
LOGIN_PROMPT = "$> "
OK = ["OK"]
FAIL = ["FAIL"]
INVALID = ["INVALID"]


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


class Invalid(Exception):
    """Malformed arguments: the reply is ``INVALID``."""


Handler = Callable[[AdminCommands, list[str]], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str
    help: str
    handler: Handler


COMMANDS: dict[str, Command] = {}


def command(name: str, usage: str, help: str) -> Callable[[Handler], Handler]:
    """Register a handler under ``name`` ("NODE ADD"); ``usage`` and ``help`` make HELP."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, usage, help, handler)
        return handler

    return register


def _int(value: str, minimum: int = 0) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise Invalid(f"not a number: {value!r}") from None
    if number < minimum:
        raise Invalid(f"must be at least {minimum}: {number}")
    return number


def _need(args: list[str], count: int) -> None:
    if len(args) < count:
        raise Invalid("missing arguments")


def pretty_json(value: Any) -> list[str]:
    """As the original's ``JSON.stringify(value, null, 2)``, one list item per line."""
    return json.dumps(value, indent=2, ensure_ascii=False).split("\n")


def _ok(flag: bool) -> list[str]:
    return OK if flag else FAIL


@command("NODE ADD", "<hostname> <port> [token]", "Add new node")
async def _node_add(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 2)
    port = _int(args[1], 1)
    if port > 65535:
        raise Invalid("port out of range")
    await cmds.node_add(args[0], port, args[2] if len(args) > 2 else "")
    return OK


@command("NODE DEL", "<node number>", "Remove a node")
async def _node_del(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    await cmds.node_del(_int(args[0], 1))
    return OK


@command("NODE INFO", "<node number>", "View node info")
async def _node_info(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return pretty_json(cmds.node_info(_int(args[0], 1)))


@command("NODE LIST", "", "List nodes")
async def _node_list(cmds: AdminCommands, args: list[str]) -> list[str]:
    return [view.line() for view in cmds.nodes()] + [""]


@command("NODE LOCK", "<node number>", "Stop forwarding tasks to this node")
async def _node_lock(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    await cmds.node_lock(_int(args[0], 1), True)
    return OK


@command("NODE UNLOCK", "<node number>", "Resume forwarding tasks to this node")
async def _node_unlock(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    await cmds.node_lock(_int(args[0], 1), False)
    return OK


@command("NODE UPDATE", "", "Update all nodes info")
async def _node_update(cmds: AdminCommands, args: list[str]) -> list[str]:
    await cmds.node_update()
    return OK


@command("NODE BEST", "<number of images>", "Show best node for the number of images")
async def _node_best(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    view = cmds.node_best(_int(args[0], 0))
    return [view.line()] if view is not None else FAIL


@command("ROUTE INFO", "<taskId>", "Find route information for task")
async def _route_info(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return pretty_json(cmds.route_info(args[0]))


@command("ROUTE LIST", "[node number]", "List routes")
async def _route_list(cmds: AdminCommands, args: list[str]) -> list[str]:
    number = _int(args[0], 1) if args else None
    return pretty_json(cmds.route_list(number))


@command("TASK LIST", "[node number]", "List tasks")
async def _task_list(cmds: AdminCommands, args: list[str]) -> list[str]:
    number = _int(args[0], 1) if args else None
    return pretty_json(await cmds.task_list(number))


@command("TASK INFO", "<taskId>", "View task info")
async def _task_info(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return pretty_json(await cmds.task_info(args[0]))


@command("TASK OUTPUT", "<taskId> [lines]", "View task output")
async def _task_output(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    line = 0
    if len(args) > 1:
        try:
            line = int(args[1], 10)
        except ValueError:
            raise Invalid(f"not a number: {args[1]!r}") from None
    output = await cmds.task_output(args[0], line)
    if isinstance(output, list):
        return [str(x) for x in output]
    return pretty_json(output)


@command("TASK CANCEL", "<taskId>", "Cancel task")
async def _task_cancel(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return _ok(await cmds.task_action("cancel", args[0]))


@command("TASK REMOVE", "<taskId>", "Remove task")
async def _task_remove(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return _ok(await cmds.task_action("remove", args[0]))


@command("ASR VIEWCMD", "<number of images>", "View command used to create a machine")
async def _asr_viewcmd(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return cmds.asr_view_command(_int(args[0], 0)).split("\n")


def help_lines() -> list[str]:
    lines = []
    for c in COMMANDS.values():
        usage = f" {c.usage}" if c.usage else ""
        lines.append(f"{c.name}{usage} - {c.help}")
    lines.append("!! - Repeat last command")
    lines.append("QUIT - Close this connection")
    return lines


def find(words: list[str]) -> tuple[Command | None, list[str]]:
    """The command named by the first one or two words (any case), and its arguments."""
    if len(words) >= 2:
        found = COMMANDS.get(f"{words[0]} {words[1]}".upper())
        if found is not None:
            return found, words[2:]
    return None, words[1:]


async def execute(cmds: AdminCommands, line: str) -> list[str]:
    """Run one command line; every outcome is a list of reply lines (never an exception)."""
    words = line.split()
    if not words:
        return []
    if words[0].upper() == "HELP":
        return help_lines()
    found, args = find(words)
    if found is None:
        return INVALID
    try:
        return await found.handler(cmds, args)
    except Invalid as e:
        log.debug("admin CLI: %s: %s", found.name, e)
        return INVALID
    except ClusterError as e:
        log.info("admin CLI: %s failed: %s", found.name, e.message)
        return FAIL
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("admin CLI: %s crashed", found.name)
        return FAIL


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
    ) -> None:
        self.cmds = cmds
        self.password = password
        self.lines = LineReader(reader)
        self.writer = writer
        self.logged_in = not password
        self.last = ""
        self.peer = _peer_name(writer)

    async def send(self, lines: list[str], prompt: bool = False) -> None:
        text = "".join(line + CRLF for line in lines)
        if prompt:
            text += PROMPT if self.logged_in else LOGIN_PROMPT
        self.writer.write(text.encode("utf-8"))
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await self.writer.drain()

    async def run(self) -> None:
        # the original's greeting, word for word, so scripts that wait for it keep working
        greeting = [f"Welcome {self.peer} {NAME}:{__version__}"]
        greeting.append("LOGIN <password> to log-in" if self.password else "HELP for help")
        greeting.append("QUIT to quit")
        await self.send(greeting, prompt=True)
        while True:
            timeout_s = IDLE_TIMEOUT_S if self.logged_in else LOGIN_TIMEOUT_S
            try:
                async with asyncio.timeout(timeout_s):
                    raw = await self.lines.next_line()
            except TimeoutError:
                await self.send(["Timed out"])
                return
            if raw is None:
                return
            if isinstance(raw, TooLong):
                await self.send(INVALID, prompt=True)
                continue
            if not await self.handle(raw.decode("utf-8", errors="replace").strip()):
                return

    async def handle(self, text: str) -> bool:
        """Answer one line; False when the connection must close."""
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


class AdminCli:
    """The listening server and its sessions; ``close()`` ends them all."""

    def __init__(self, cmds: AdminCommands, password: str = "") -> None:
        self.cmds = cmds
        self.password = password
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()

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

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if len(self._sessions) >= MAX_CONNECTIONS:
                log.warning("admin CLI: too many connections, refusing %s", _peer_name(writer))
                writer.write(b"Too many admin connections, try again later" + CRLF.encode())
                return
            if task is not None:
                self._sessions.add(task)
            await Session(self.cmds, self.password, reader, writer).run()
        except (ConnectionError, TimeoutError) as e:
            log.debug("admin CLI: connection ended: %r", e)
        finally:
            if task is not None:
                self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None


async def start_cli(cmds: AdminCommands, host: str, port: int, password: str = "") -> AdminCli:
    """Start the admin CLI on ``port`` (0 = any free port: read ``.port``)."""
    cli = AdminCli(cmds, password)
    await cli.start(host, port)
    return cli
