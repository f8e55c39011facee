"""Strict decimal numbers from hostile text: ASCII digits only, bounded length, bounded value.

``str.isdigit()`` accepts ``²`` and ``①`` that ``int()`` refuses, ``int()`` accepts ``"+1"``,
``" 1"``, ``"1_0"`` and Arabic-Indic digits, and a 5,000-digit string costs time to convert and
then raises. Every admin number and node port goes through ``parse_decimal`` instead.

No imports from the rest of the package: any layer may use it.
"""

from __future__ import annotations

import re

MAX_DIGITS = 9
"""Longer digit strings are refused before conversion (nothing we count reaches 10**9)."""

_DIGITS = re.compile(r"[0-9]+")


class BadNumber(ValueError):
    """The text is not a number in range; ``str()`` says why, for the reply."""


def parse_decimal(
    text: str,
    what: str = "number",
    *,
    minimum: int = 0,
    maximum: int | None = None,
    max_digits: int = MAX_DIGITS,
) -> int:
    """``text`` as a non-negative integer in ``[minimum, maximum]``, or BadNumber.

    Only ASCII digits (no sign, spaces, underscores or other scripts' digits), at most
    ``max_digits`` of them, so the conversion is cheap whatever the input.
    """
    if not isinstance(text, str) or len(text) > max_digits or not _DIGITS.fullmatch(text):
        raise BadNumber(f"{what} must be a whole number of at most {max_digits} digits")
    number = int(text, 10)
    if number < minimum:
        raise BadNumber(f"{what} must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise BadNumber(f"{what} must be at most {maximum}")
    return number
