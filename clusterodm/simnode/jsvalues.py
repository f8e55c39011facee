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
from typing import Any, NoReturn

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


_DECIMAL = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_RADIX = {"0x": 16, "0o": 8, "0b": 2}
#: What JavaScript's ``Number()`` strips around a number (ECMAScript white space and line ends).
_JS_SPACE = " \t\n\v\f\r\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(
    chr(code) for code in range(0x2000, 0x200B)
)


def to_number(text: str) -> float | int:
    """``Number(text)`` for a string: whole-string conversion, NaN when any of it is not a number.

    Unlike ``parseInt``, ``"5abc"`` is NaN; ``""`` is 0; ``0x10`` is 16; ``1e2`` is 100.
    """
    text = text.strip(_JS_SPACE)
    if not text:
        return 0
    prefix = text[:2].lower()
    if prefix in _RADIX:
        try:
            return int(text[2:], _RADIX[prefix]) if text[2:].isalnum() else math.nan
        except ValueError:
            return math.nan
    if text.lstrip("+-") == "Infinity" and text.count("+") + text.count("-") <= 1:
        return -math.inf if text.startswith("-") else math.inf
    if not _DECIMAL.match(text):
        return math.nan
    number = float(text)
    return int(number) if number.is_integer() else number


def slice_start(raw: str | None) -> int:
    """The ``N`` of ``Array.slice(N)`` for a ``line``/``with_output`` query value (0 if absent).

    NodeODM hands the query string itself to ``slice``, which converts it with ``Number()`` and
    truncates: ``"2.7"`` is 2, ``"-2.7"`` is -2, ``"abc"`` and ``"5abc"`` are 0, ``Infinity`` is
    past the end.
    """
    if raw is None:
        return 0
    number = to_number(raw)
    if isinstance(number, float):
        if math.isnan(number):
            return 0
        if math.isinf(number):
            return _SLICE_END if number > 0 else -_SLICE_END
        return int(number)
    return number


_SLICE_END = 2**62


def dumps(value: Any) -> str:
    """``JSON.stringify``: compact separators, as Express sends."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class JsonError(ValueError):
    """Text that ``JSON.parse`` would refuse; ``str()`` is the message Node.js 20 gives."""


def parse_json(text: str) -> Any:
    """``JSON.parse(text)``: no NaN or Infinity; errors worded as Node.js 20 (V8) words them."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, _Refused):
        raise JsonError(_JsonScanner(text).error()) from None


class _Refused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Refused(name)


_JSON_SPACE = " \t\n\r"
_CONTEXT = 10  # characters of context V8 shows on each side of an unexpected character
_SHORT_SOURCE = 2 * _CONTEXT + 1  # shorter sources are quoted whole
_SPECIAL_SOURCES = ("NaN", "Infinity", "undefined", "[object Object]")
_ESCAPES = '"\\/bfnrtu'


class _JsonError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _JsonScanner:
    """Finds the first syntax error of ``text`` the way V8's JSON parser reports it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self) -> str:
        try:
            self.value()
            self.space()
            if self.pos < len(self.text):
                raise _JsonError(
                    f"Unexpected non-whitespace character after JSON at position {self.pos}"
                )
        except _JsonError as error:
            return error.message
        return "Unexpected token in JSON"  # not reached for text json.loads refused

    def fail(self, message: str | None = None) -> NoReturn:
        if message is not None:
            raise _JsonError(f"{message} in JSON at position {self.pos}")
        if self.pos >= len(self.text):
            raise _JsonError("Unexpected end of JSON input")
        char = self.text[self.pos]
        if char == '"':
            raise _JsonError(f"Unexpected string in JSON at position {self.pos}")
        if char.isdigit() or char == "-":
            raise _JsonError(f"Unexpected number in JSON at position {self.pos}")
        raise _JsonError(self._unexpected(char))

    def _unexpected(self, char: str) -> str:
        text, pos = self.text, self.pos
        if text in _SPECIAL_SOURCES:
            return f'"{text}" is not valid JSON'
        if len(text) < _SHORT_SOURCE:
            return f"Unexpected token '{char}', \"{text}\" is not valid JSON"
        if pos < _CONTEXT:
            quoted = f'"{text[: pos + _CONTEXT]}"...'
        elif pos < len(text) - _CONTEXT:
            quoted = f'..."{text[pos - _CONTEXT : pos + _CONTEXT]}"...'
        else:
            quoted = f'..."{text[pos - _CONTEXT :]}"'
        return f"Unexpected token '{char}', {quoted} is not valid JSON"

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def space(self) -> None:
        while self.peek() and self.peek() in _JSON_SPACE:
            self.pos += 1

    def value(self) -> None:
        self.space()
        char = self.peek()
        if char == "{":
            self.obj()
        elif char == "[":
            self.array()
        elif char == '"':
            self.string()
        elif char == "-" or char.isdigit():
            self.number()
        elif char in ("t", "f", "n"):
            self.literal({"t": "true", "f": "false", "n": "null"}[char])
        else:
            self.fail()

    def literal(self, word: str) -> None:
        for expected in word:
            if self.peek() != expected:
                self.fail()
            self.pos += 1

    def obj(self) -> None:
        self.pos += 1
        self.space()
        if self.peek() == "}":
            self.pos += 1
            return
        if self.peek() != '"':
            self.fail("Expected property name or '}'")
        first = True
        while True:
            self.string()
            self.space()
            if self.peek() != ":":  # V8 names the problem for the first property only
                self.fail("Expected ':' after property name" if first else None)
            first = False
            self.pos += 1
            self.value()
            self.space()
            if self.peek() == "}":
                self.pos += 1
                return
            if self.peek() != ",":
                self.fail("Expected ',' or '}' after property value")
            self.pos += 1
            self.space()
            if self.peek() != '"':
                self.fail("Expected double-quoted property name")

    def array(self) -> None:
        self.pos += 1
        self.space()
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            self.value()
            self.space()
            if self.peek() == "]":
                self.pos += 1
                return
            if self.peek() != ",":
                self.fail("Expected ',' or ']' after array element")
            self.pos += 1

    def string(self) -> None:
        self.pos += 1
        while True:
            char = self.peek()
            if not char:
                self.fail("Unterminated string")
            if char == '"':
                self.pos += 1
                return
            if char < " ":
                self.fail("Bad control character in string literal")
            if char == "\\":
                self.pos += 1
                escape = self.peek()
                if not escape:
                    self.fail()
                if escape not in _ESCAPES:
                    self.fail("Bad escaped character")
                if escape == "u":
                    for _ in range(4):
                        self.pos += 1
                        if self.peek() == "" or self.peek() not in "0123456789abcdefABCDEF":
                            self.fail("Bad Unicode escape")
            self.pos += 1

    def digits(self) -> int:
        start = self.pos
        while self.peek().isdigit() and self.peek().isascii():
            self.pos += 1
        return self.pos - start

    def number(self) -> None:
        if self.peek() == "-":
            self.pos += 1
            if not (self.peek().isascii() and self.peek().isdigit()):
                self.fail("No number after minus sign")
        if self.peek() == "0":
            self.pos += 1
            if self.peek().isascii() and self.peek().isdigit():
                self.fail()
        else:
            self.digits()
        if self.peek() == ".":
            self.pos += 1
            if not self.digits():
                self.fail("Unterminated fractional number")
        if self.peek() in ("e", "E"):
            self.pos += 1
            if self.peek() in ("+", "-"):
                self.pos += 1
            if not self.digits():
                self.fail("Exponent part is missing a number")
