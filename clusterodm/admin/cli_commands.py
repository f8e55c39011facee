"""Admin CLI commands: parse each command's arguments and choose its reply, as the original does.

The reply codes match the original ClusterODM 1.5.8 command by command (checked against it
running, table in docs/admin.md): ``INVALID`` for a malformed command and for a target that does
not exist where the original looks it up (NODE INFO, ROUTE INFO/LIST, TASK LIST/INFO/OUTPUT/
CANCEL/REMOVE); ``FAIL`` where the original's action returns false (a duplicate NODE ADD, NODE
DEL/LOCK/UNLOCK of a bad number, a failed NODE UPDATE). TASK INFO/OUTPUT/CANCEL/REMOVE print the
node's JSON answer, or ``{"error": ...}`` when the node cannot be asked, as the original does.

Every number goes through ``_number`` (``numbers.parse_decimal``: ASCII digits, bounded length),
once; what a command does lives in ``commands.py``. The wire (lines, login, prompts) is
``telnet.py``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from clusterodm.admin.commands import AdminCommands, NodeBusy, NodeOutOfRange, NodeView
from clusterodm.errors import ClusterError, NodeError, TaskNotFound
from clusterodm.nodes.address import BadAddress
from clusterodm.nodes.discovery import NodeIsDiscovered
from clusterodm.numbers import BadNumber, parse_decimal

log = logging.getLogger("clusterodm.admin.telnet")

OK = ["OK"]
FAIL = ["FAIL"]
INVALID = ["INVALID"]
NO_BEST_NODE = "No best node available"
OUTPUT_LINE_DIGITS = 9


class Reply(Exception):
    """Ends a command early with these reply lines; ``why`` goes to the debug log."""

    def __init__(self, lines: list[str], why: str) -> None:
        super().__init__(why)
        self.lines = lines
        self.why = why


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


def _number(text: str, what: str, bad: list[str] = INVALID, minimum: int = 1) -> int:
    """The one parse of every CLI number; a bad one ends the command with ``bad``."""
    try:
        return parse_decimal(text, what, minimum=minimum)
    except BadNumber as e:
        raise Reply(bad, str(e)) from None


def _node(cmds: AdminCommands, text: str, bad: list[str] = INVALID) -> NodeView:
    number = _number(text, "node number", bad)
    try:
        return cmds.node(number)
    except NodeOutOfRange as e:
        raise Reply(bad, e.message) from None


def _need(args: list[str], count: int) -> None:
    if len(args) < count:
        raise Reply(INVALID, "missing arguments")


def pretty_json(value: Any) -> list[str]:
    """As the original's ``JSON.stringify(value, null, 2)``, one list item per line."""
    return json.dumps(value, indent=2, ensure_ascii=False).split("\n")


@command("NODE ADD", "<hostname> <port> [token]", "Add new node")
async def _node_add(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 2)
    try:
        await cmds.node_add(args[0], args[1], args[2] if len(args) > 2 else "")
    except BadAddress as e:
        return [e.message, *INVALID]  # the reason first: the original has no such check
    return OK  # a duplicate raises InvalidRequest: FAIL, as the original


@command(
    "NODE DEL",
    "<node number> [--force]",
    "Remove a node (a busy one only with --force; NODE LOCK drains it first)",
)
async def _node_del(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    if any(a != "--force" for a in args[1:]):
        return INVALID  # only --force may follow the node number
    try:
        await cmds.node_del(_number(args[0], "node number", FAIL), force="--force" in args[1:])
    except (NodeIsDiscovered, NodeBusy) as e:
        log.info("admin CLI: NODE DEL refused: %s", e.message)
        return [e.message, *FAIL]  # the reason, then the reply scripts look for
    return OK


@command("NODE INFO", "<node number>", "View node info")
async def _node_info(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return pretty_json(_node(cmds, args[0]).node_data())


@command("NODE LIST", "", "List nodes")
async def _node_list(cmds: AdminCommands, args: list[str]) -> list[str]:
    return [view.line() for view in cmds.nodes()] + [""]


@command("NODE LOCK", "<node number>", "Stop forwarding tasks to this node")
async def _node_lock(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    await cmds.node_lock(_number(args[0], "node number", FAIL), True)
    return OK


@command("NODE UNLOCK", "<node number>", "Resume forwarding tasks to this node")
async def _node_unlock(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    await cmds.node_lock(_number(args[0], "node number", FAIL), False)
    return OK


@command("NODE UPDATE", "", "Update all nodes info")
async def _node_update(cmds: AdminCommands, args: list[str]) -> list[str]:
    await cmds.node_update()
    return OK


@command("NODE BEST", "<number of images>", "Show best node for the number of images")
async def _node_best(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    view = cmds.node_best(_number(args[0], "number of images", minimum=0))
    return [view.line()] if view is not None else [NO_BEST_NODE]


@command("ROUTE INFO", "<taskId>", "Find route information for task")
async def _route_info(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    return pretty_json(cmds.route_info(args[0]))


@command("ROUTE LIST", "[node number]", "List routes")
async def _route_list(cmds: AdminCommands, args: list[str]) -> list[str]:
    number = _node(cmds, args[0]).number if args else None
    return pretty_json(cmds.route_list(number))


@command("TASK LIST", "[node number]", "List tasks")
async def _task_list(cmds: AdminCommands, args: list[str]) -> list[str]:
    number = _node(cmds, args[0]).number if args else None
    return pretty_json(await cmds.task_list(number))


@command("TASK INFO", "<taskId>", "View task info")
async def _task_info(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    try:
        return pretty_json(await cmds.task_info(args[0]))
    except NodeError as e:
        return pretty_json({"error": e.message})


def _line_number(text: str) -> int:
    """NodeODM's ``line``: from the start, or from the end when negative."""
    digits = text[1:] if text.startswith("-") else text
    number = _number(digits, "line", minimum=0)
    return -number if digits is not text else number


@command("TASK OUTPUT", "<taskId> [lines]", "View task output")
async def _task_output(cmds: AdminCommands, args: list[str]) -> list[str]:
    _need(args, 1)
    line = _line_number(args[1]) if len(args) > 1 else 0
    try:
        output = await cmds.task_output(args[0], line)
    except NodeError as e:
        return pretty_json({"error": e.message})
    if isinstance(output, list):
        return [str(x) for x in output]
    return pretty_json(output)


async def _task_act(cmds: AdminCommands, action: str, args: list[str]) -> list[str]:
    _need(args, 1)
    try:
        return pretty_json(await cmds.task_action(action, args[0]))
    except NodeError as e:
        return pretty_json({"error": e.message})


@command("TASK CANCEL", "<taskId>", "Cancel task")
async def _task_cancel(cmds: AdminCommands, args: list[str]) -> list[str]:
    return await _task_act(cmds, "cancel", args)


@command("TASK REMOVE", "<taskId>", "Remove task")
async def _task_remove(cmds: AdminCommands, args: list[str]) -> list[str]:
    return await _task_act(cmds, "remove", args)


@command("ASR VIEWCMD", "<number of images>", "View command used to create a machine")
async def _asr_viewcmd(cmds: AdminCommands, args: list[str]) -> list[str]:
    if cmds.autoscaler is None:
        raise Reply(INVALID, "no autoscaler configured (--asr)")
    _need(args, 1)
    return cmds.asr_view_command(_number(args[0], "number of images", minimum=0)).split("\n")


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
    except Reply as r:
        log.debug("admin CLI: %s: %s", found.name, r.why)
        return r.lines
    except TaskNotFound as e:
        log.debug("admin CLI: %s: %s", found.name, e.message)
        return INVALID
    except ClusterError as e:
        log.info("admin CLI: %s failed: %s", found.name, e.message)
        return FAIL
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.error("admin CLI: %s crashed: %s: %.200s", found.name, type(e).__name__, e)
        return FAIL
