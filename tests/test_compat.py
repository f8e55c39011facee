"""Python 3.10 support stays true as the code changes (CI runs 3.11; mypy checks the 3.10 API).

On 3.10 ``asyncio.wait_for`` and aiohttp raise ``asyncio.TimeoutError``, which only became the
builtin ``TimeoutError`` in 3.11: a handler naming one must name both, or a timeout on 3.10
escapes it (a health loop that dies on its first slow node, for instance).
"""

from __future__ import annotations

import ast
from pathlib import Path

import clusterodm
from clusterodm.compat import StrEnum, cancel_requested

PACKAGE = Path(clusterodm.__file__).parent


def _names(node: ast.expr | None) -> set[str]:
    if node is None:
        return set()
    parts = node.elts if isinstance(node, ast.Tuple) else [node]
    return {ast.unparse(p) for p in parts}


def test_timeout_handlers_catch_asyncios_timeout_too() -> None:
    missing = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            caught: set[str] = set()
            if isinstance(node, ast.ExceptHandler):
                caught = _names(node.type)
            elif (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).endswith("suppress")
                and node.args
            ):
                caught = {ast.unparse(a) for a in node.args}
            if "TimeoutError" in caught and "asyncio.TimeoutError" not in caught:
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert missing == [], "catch (TimeoutError, asyncio.TimeoutError) for Python 3.10"


async def test_compat_names_behave_as_311s() -> None:
    class Stage(StrEnum):
        QUEUED = "queued"

    assert str(Stage.QUEUED) == "queued" and f"{Stage.QUEUED}" == "queued"
    assert Stage("queued") is Stage.QUEUED and Stage.QUEUED == "queued"
    assert cancel_requested() is False, "this task has no cancel pending"
