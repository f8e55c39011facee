"""``JSON.parse`` as the original ClusterODM's runtime (Node.js 14) parses and words its errors.

Clients of the original see V8's messages for a bad ``options`` field (``Unexpected token b in
JSON at position 0``, ``Unexpected end of JSON input``). Python's parser accepts the same texts
(plus ``NaN`` and ``Infinity``, refused here as V8 refuses them) but stops at other places: V8
reads a literal, a number's sign, fraction or exponent, and a ``\\u`` escape up to their first
wrong character, then names it. :func:`loads` moves Python's position there, so the message
and its position are the original's. Checked against the original, case by case
(tests/tasks/test_jsjson.py). Pure.
"""

from __future__ import annotations

import json
from typing import Any

_LITERALS = ("true", "false", "null")
_HEX = frozenset("0123456789abcdefABCDEF")


class JsJsonError(ValueError):
    """A parse failure; ``str()`` is V8's message."""


def loads(text: str) -> Any:
    """``JSON.parse(text)``: the value, or :class:`JsJsonError` with V8's words."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except _Constant:
        raise JsJsonError(message(text, _first_constant(text))) from None
    except json.JSONDecodeError as e:
        raise JsJsonError(message(text, _v8_position(text, e))) from None


def message(text: str, pos: int) -> str:
    """V8's words for a failure at ``pos`` of ``text``."""
    if pos >= len(text):
        return "Unexpected end of JSON input"
    c = text[pos]
    if c == '"':
        return f"Unexpected string in JSON at position {pos}"
    if c.isdigit() or c == "-":
        return f"Unexpected number in JSON at position {pos}"
    return f"Unexpected token {c} in JSON at position {pos}"


class _Constant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


def _first_constant(text: str) -> int:
    """Where the first ``NaN``/``Infinity`` is, outside strings (the failure is the first one)."""
    in_string = escaped = False
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "NI":
            return i
    return len(text)


def _v8_position(text: str, e: json.JSONDecodeError) -> int:
    """Python's failure position moved to the character V8 stops at."""
    pos = e.pos
    if e.msg.startswith("Unterminated string"):
        return len(text)
    if e.msg.startswith("Invalid \\uXXXX escape"):
        start = text.rfind("\\u", 0, pos + 2)
        pos = start + 2 if start >= 0 else pos
        while pos < len(text) and text[pos] in _HEX:
            pos += 1
        return pos
    if e.msg.startswith("Invalid \\escape"):
        return pos + 1
    if e.msg.startswith("Illegal trailing comma"):  # Python 3.13+ points at the comma
        pos += 1
        while pos < len(text) and text[pos] in " \t\n\r":
            pos += 1
        return pos
    if pos >= len(text):
        return pos
    c = text[pos]
    for word in _LITERALS:
        if c == word[0]:
            n = 0
            while n < len(word) and pos + n < len(text) and text[pos + n] == word[n]:
                n += 1
            return pos + n
    if c == "-":
        return pos + 1  # V8 takes the sign, then wants a digit
    if c in ".eE" and pos > 0 and text[pos - 1].isdigit():
        pos += 1  # a fraction or an exponent without its digits
        if c in "eE" and pos < len(text) and text[pos] in "+-":
            pos += 1
    return pos
