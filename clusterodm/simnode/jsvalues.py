"""JavaScript value conversions that NodeODM's answers depend on.

NodeODM is written in JavaScript, so query parameters and option values go through
``parseInt``, ``parseFloat`` and template-string formatting; clients see the results (e.g.
``line=2.7`` acts as 2, an invalid number prints as ``NaN``). This module imports nothing else
from the package.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_INT_PREFIX = re.compile(r"^\s*([+-]?\d+)")
_FLOAT_PREFIX = re.compile(
    r"^\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Infinity))"
)


def js_str(value: Any) -> str:
    """Format ``value`` as a JavaScript template string would (``${value}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return ",".join(js_str(v) for v in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def parse_int(value: Any) -> float | int:
    """``parseInt(value)``: the leading integer of its string form, or NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return math.nan if not math.isfinite(value) else int(value)
    match = _INT_PREFIX.match(js_str(value))
    return int(match.group(1)) if match else math.nan


def parse_float(value: Any) -> float | int:
    """``parseFloat(value)``: the leading number of its string form, or NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, int | float):
        return value
    match = _FLOAT_PREFIX.match(js_str(value))
    if not match:
        return math.nan
    text = match.group(1)
    number = float(text.replace("Infinity", "inf"))
    return (
        int(number)
        if number.is_integer() and "." not in text and "e" not in text.lower()
        else number
    )


def slice_start(raw: str | None) -> int:
    """The ``N`` of ``Array.slice(N)`` for a ``line``/``with_output`` query value (0 if absent)."""
    if raw is None:
        return 0
    number = parse_int(raw)
    return 0 if isinstance(number, float) else number


def dumps(value: Any) -> str:
    """``JSON.stringify``: compact separators, as Express sends."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class JsonError(ValueError):
    """Text that ``JSON.parse`` would refuse; ``str()`` resembles Node's parser message."""


def parse_json(text: str) -> Any:
    """``JSON.parse(text)``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JsonError(f"Unexpected token in JSON at position {error.pos}") from None
