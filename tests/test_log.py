"""Log lines carry the task and node they are about."""

from __future__ import annotations

import contextvars
import logging

from clusterodm import log


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
