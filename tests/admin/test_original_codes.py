"""Admin CLI reply codes beside the original ClusterODM 1.5.8's, command by command (#14).

The same commands go to the CLI of the original (run by ``$CLUSTERODM_ORIGINAL_SH``, the script
beside the peers in ``../shared/peers``) and to ours, each in front of the same real NodeODM
with one task; every reply is reduced to its kind (``OK``, ``FAIL``, ``INVALID``, JSON, a NODE
LIST line...) and compared with ``CASES``, which is also the table in docs/admin.md. Our side
always runs (it needs only the real node); the original's runs when it is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from clusterodm.admin import AdminCommands, start_cli
from tests.conftest import ClusterFactory
from tests.helpers import eventually
from tests.realnode import RealNode
from tests.redis_server import free_port

ENV = "CLUSTERODM_ORIGINAL_SH"
START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 3.0
UNKNOWN = "78f14e5c-0d93-4196-843e-ebbf0f537676"
NODE_LINE = re.compile(r"^\d+\) \S+ \[(online|offline)\] \[\d+/\d+\] <engine: [^>]*> <API: [^>]*>")

# (command, the original's reply, ours); {host} {port} the node, {task} a task on it.
# NOPROMPT: the original answers and then prints no prompt (an unhandled error on its side).
CASES: list[tuple[str, str, str]] = [
    ("NODE ADD {host} {port}", "FAIL", "FAIL"),  # already there: a duplicate
    ("NODE ADD onlyhost", "INVALID", "INVALID"),
    ("NODE DEL 9", "FAIL", "FAIL"),
    ("NODE DEL x", "FAIL", "FAIL"),
    ("NODE DEL ²", "FAIL", "FAIL"),
    ("NODE DEL", "INVALID", "INVALID"),
    ("NODE LOCK 9", "FAIL", "FAIL"),
    ("NODE LOCK x", "FAIL", "FAIL"),
    ("NODE UNLOCK 9", "FAIL", "FAIL"),
    ("NODE LOCK", "INVALID", "INVALID"),
    ("NODE INFO 1", "JSON", "JSON"),
    ("NODE INFO 9", "INVALID", "INVALID"),
    ("NODE INFO 0", "INVALID", "INVALID"),
    ("NODE INFO x", "INVALID", "INVALID"),
    ("NODE INFO ²", "INVALID", "INVALID"),
    ("NODE INFO 1x", "JSON", "INVALID"),  # strict numbers here
    ("NODE INFO", "INVALID", "INVALID"),
    ("NODE UPDATE", "OK", "OK"),
    ("NODE LIST", "NODE", "NODE"),
    ("NODE BEST 5", "NODE", "NODE"),
    ("NODE BEST x", "NODE", "INVALID"),  # strict numbers here
    ("NODE BEST", "INVALID", "INVALID"),
    ("NODE FOO", "INVALID", "INVALID"),
    ("NODE", "INVALID", "INVALID"),
    ("ROUTE INFO {task}", "JSON", "JSON"),
    ("ROUTE INFO " + UNKNOWN, "INVALID", "INVALID"),
    ("ROUTE INFO", "PROMPT", "INVALID"),
    ("ROUTE LIST", "JSON", "JSON"),
    ("ROUTE LIST 1", "JSON", "JSON"),
    ("ROUTE LIST 9", "INVALID", "INVALID"),
    ("ROUTE LIST x", "INVALID", "INVALID"),
    ("ROUTE FOO", "PROMPT", "INVALID"),
    ("ROUTE", "INVALID", "INVALID"),
    ("TASK LIST", "JSON", "JSON"),
    ("TASK LIST 9", "INVALID", "INVALID"),
    ("TASK LIST x", "INVALID", "INVALID"),
    ("TASK INFO {task}", "JSON", "JSON"),
    ("TASK INFO " + UNKNOWN, "INVALID", "INVALID"),
    ("TASK INFO not-a-uuid", "INVALID", "INVALID"),
    ("TASK INFO", "PROMPT", "INVALID"),
    ("TASK OUTPUT " + UNKNOWN, "INVALID", "INVALID"),
    ("TASK OUTPUT {task} x", "TEXT", "INVALID"),  # strict numbers here
    ("TASK CANCEL " + UNKNOWN, "INVALID NOPROMPT", "INVALID"),
    ("TASK REMOVE " + UNKNOWN, "INVALID NOPROMPT", "INVALID"),
    ("TASK FOO", "PROMPT", "INVALID"),
    ("TASK", "INVALID", "INVALID"),
    ("ASR VIEWCMD 5", "INVALID NOPROMPT", "INVALID"),  # no autoscaler
    ("ASR", "INVALID", "INVALID"),
    ("FOO", "INVALID", "INVALID"),
    ("TASK CANCEL {task}", "JSON", "JSON"),
    ("TASK REMOVE {task}", "JSON", "JSON"),
]


def kind(reply: bytes, prompted: bool) -> str:
    """What a reply is, as scripts tell replies apart."""
    text = reply.decode("utf-8", errors="replace").strip()
    if not text:
        out = "PROMPT"
    elif text in ("OK", "FAIL", "INVALID"):
        out = text
    elif text[0] in "{[":
        out = "JSON"
    elif NODE_LINE.match(text):
        out = "NODE"
    else:
        out = "TEXT"
    return out if prompted else f"{out} NOPROMPT"


async def ask(port: int, line: str) -> str:
    """One command on a connection of its own (the original reads one command per packet)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.wait_for(reader.readuntil(b"#> "), REPLY_TIMEOUT_S)
        writer.write(line.encode("utf-8") + b"\r\n")
        await writer.drain()
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_TIMEOUT_S
        while not data.endswith(b"#> "):
            left = deadline - loop.time()
            if left <= 0:
                return kind(data, prompted=False)
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), left)
            except TimeoutError:
                return kind(data, prompted=False)
            if not chunk:
                return kind(data, prompted=False)
            data += chunk
        return kind(data[:-3], prompted=True)
    finally:
        writer.close()


async def new_task(url: str) -> str:
    form = aiohttp.FormData()
    for i in range(2):
        form.add_field("images", b"\xff\xd8\xff\xe0" + b"\0" * 100, filename=f"i{i}.jpg")
    async with aiohttp.ClientSession() as s, s.post(f"{url}/task/new", data=form) as r:
        return str((await r.json())["uuid"])


async def run_cases(cli_port: int, node: RealNode, task: str, column: int) -> list[str]:
    """Every case whose reply is not the expected one, as readable lines."""
    wrong = []
    for case in CASES:
        line = case[0].format(host=node.host, port=node.port, task=task)
        got = await ask(cli_port, line)
        if got != case[column]:
            wrong.append(f"{line!r}: expected {case[column]!r}, got {got!r}")
    return wrong


def _listens(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=1.0) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture
def original() -> Iterator[tuple[int, int]]:
    """The original ClusterODM on free ports: (proxy port, CLI port); stopped afterwards."""
    script = os.environ.get(ENV, "")
    if not (script and os.path.isfile(script)):
        pytest.skip(f"{ENV} is not set to ../shared/peers/clusterodm-original.sh")
    port, cli, web = free_port(), free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="original-"))
    log = open(work / "original.log", "wb")
    process = subprocess.Popen(
        [script, str(port), str(cli), str(web)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listens(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "original.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield port, cli
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture
async def real_node(real_node_factory: object) -> AsyncIterator[RealNode]:
    yield await real_node_factory(test_seconds=30)  # type: ignore[operator]


async def test_original_answers_as_the_table_says(
    original: tuple[int, int], real_node: RealNode
) -> None:
    port, cli = original
    assert await ask(cli, f"NODE ADD {real_node.host} {real_node.port}") == "OK"
    task = await new_task(f"http://127.0.0.1:{port}")
    assert await run_cases(cli, real_node, task, column=1) == []


async def test_ours_answers_as_the_table_says(
    real_node: RealNode, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory()
    cli = await start_cli(AdminCommands(cluster.deps), "127.0.0.1", 0)
    try:
        assert await ask(cli.port, f"NODE ADD {real_node.host} {real_node.port}") == "OK"
        task = await new_task(cluster.url)
        await eventually(lambda: cluster.deps.routes.get(task), message="task on its node")
        assert await run_cases(cli.port, real_node, task, column=2) == []
    finally:
        await cli.close()
