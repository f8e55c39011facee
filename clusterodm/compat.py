"""Python 3.10 support: the few 3.11 standard-library names the cluster uses, in one place.

Ubuntu 22.04 ships Python 3.10. On 3.11+ these are the standard library's own objects; on 3.10
they come from the backports that ``pyproject.toml`` installs there only (``taskgroup`` for
``TaskGroup``/``Runner``/``timeout`` with the cancellation counting they need, ``exceptiongroup``,
``tomli``). Modules import them from here instead of from ``asyncio``/``enum``/``tomllib``.
"""

from __future__ import annotations

import asyncio
import sys

if sys.version_info >= (3, 11):
    import tomllib  # noqa: I001 (standard library from 3.11 on)
    from asyncio import Runner, TaskGroup, timeout
    from builtins import ExceptionGroup
    from enum import StrEnum
else:  # pragma: no cover - exercised on Python 3.10 only
    from enum import Enum

    import tomli as tomllib
    from exceptiongroup import ExceptionGroup
    from taskgroup import Runner, TaskGroup, timeout

    class StrEnum(str, Enum):
        """Members are their values, in ``str()`` and f-strings too (as 3.11's StrEnum)."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


def cancel_requested() -> bool:
    """Whether the running task has a cancel pending (3.11's ``Task.cancelling()``; the 3.10
    backport's tasks have it, plain 3.10 tasks do not and count as not cancelled)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


__all__ = [
    "ExceptionGroup",
    "Runner",
    "StrEnum",
    "TaskGroup",
    "cancel_requested",
    "timeout",
    "tomllib",
]
