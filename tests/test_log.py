"""Log lines carry the task and node they are about."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from clusterodm import log
from tests.conftest import ClusterFactory


def _format(msg: str) -> str:
    fmt = log.ContextFormatter("%(levelname)s %(name)s: %(message)s")
    return fmt.format(logging.LogRecord("clusterodm.x", logging.INFO, __file__, 1, msg, (), None))


def test_context_fields_only_when_set() -> None:
    def inside() -> tuple[str, str]:
        plain = _format("hello")
        log.task_uuid.set("1234")
        log.node_key.set("h:3000")
        return plain, _format("forwarded")

    plain, stamped = contextvars.copy_context().run(inside)
    assert plain == "INFO clusterodm.x: hello"
    assert stamped == "INFO clusterodm.x: forwarded uuid=1234 node=h:3000"
    assert _format("outside") == "INFO clusterodm.x: outside", "context does not leak"


def test_original_level_names() -> None:
    assert log.LEVELS["warn"] == logging.WARNING
    assert log.LEVELS["verbose"] < logging.INFO < log.LEVELS["error"]
    log.setup("debug")
    assert logging.getLogger().level == logging.DEBUG
    log.setup("info")


def _record(msg: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("clusterodm.x", logging.INFO, __file__, 1, msg, (), None)
    record.fields = fields
    return record


ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def test_text_lines_carry_iso_time_context_and_fields() -> None:
    fmt = log.make_formatter("text")

    def inside() -> str:
        log.task_uuid.set("u-1")
        log.user_name.set("alice")
        return fmt.format(_record("task done", event="completed", node="h:1", took=1.23456))

    line = contextvars.copy_context().run(inside)
    stamp, rest = line.split(" ", 1)
    assert ISO_MS.match(stamp), stamp
    assert rest == (
        "INFO clusterodm.x: task done uuid=u-1 node=h:1 user=alice event=completed took=1.235"
    )
    quoted = fmt.format(_record("x", reason='no "route" here'))
    assert quoted.endswith(r'reason="no \"route\" here"'), "values with spaces are quoted"


def test_json_lines_are_one_object_each() -> None:
    fmt = log.make_formatter("json")

    def inside() -> str:
        log.node_key.set("h:3000")
        return fmt.format(_record("multi\nline", event="queued", place=2))

    line = contextvars.copy_context().run(inside)
    assert "\n" not in line
    obj = json.loads(line)
    assert ISO_MS.match(obj["time"])
    assert obj["level"] == "info" and obj["logger"] == "clusterodm.x"
    assert obj["msg"] == "multi\nline" and obj["node"] == "h:3000"
    assert obj["event"] == "queued" and obj["place"] == 2


async def test_access_log_only_at_verbose_and_without_the_query(
    cluster_factory: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for level, expected in ((logging.INFO, 0), (log.VERBOSE, 1)):
        caplog.clear()
        logging.getLogger().setLevel(level)
        caplog.set_level(level)
        try:
            cluster = await cluster_factory()
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"{cluster.url}/info", params={"token": "s3cret"}) as r,
            ):
                assert r.status == 200
            await cluster.stop()
        finally:
            logging.getLogger().setLevel(logging.INFO)
        lines = [r for r in caplog.records if r.name == "aiohttp.access"]
        assert len(lines) == expected, level
        assert all("s3cret" not in r.getMessage() for r in caplog.records)
    assert lines[0].getMessage() == "GET /info 200"
    assert lines[0].fields["event"] == "http"  # type: ignore[attr-defined]


async def test_legacy_import_is_logged_once(
    cluster_factory: ClusterFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "legacy"
    data.mkdir()
    (data / "nodes.json").write_text('[{"hostname": "127.0.0.1", "port": "9", "token": ""}]')
    caplog.set_level(logging.INFO)
    await cluster_factory(data_dir=data)
    assert sum("imported" in r.getMessage() for r in caplog.records) == 1


def test_fields_stay_on_the_first_line_of_a_traceback() -> None:
    fmt = log.make_formatter("text")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "clusterodm.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    record.fields = {"uuid": "u-9"}
    first, *rest = fmt.format(record).splitlines()
    assert first.endswith("ERROR clusterodm.x: failed uuid=u-9")
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"
    obj = json.loads(log.make_formatter("json").format(record))
    assert obj["uuid"] == "u-9" and obj["exc"].endswith("ValueError: boom")
