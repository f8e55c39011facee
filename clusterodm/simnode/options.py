"""Processing options: the node's option list and NodeODM's validation of client options.

Owns ``options.json`` (the exact ``GET /options`` body of a NodeODM in test mode) and the rules
that turn a client's ``[{name, value}]`` into typed values or one error string holding a JSON list
of ``{name, error}``, as NodeODM answers. Pure: no I/O beyond reading the packaged file once.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from importlib import resources
from typing import Any

from .jsvalues import dumps, js_str, parse_float, parse_int, parse_json

#: Options NodeODM appends at initialisation unless ``skipPostProcessing`` is set.
POST_PROCESSING_DEFAULTS = ("pc-ept", "cog", "gltf")


class OptionsError(ValueError):
    """Client options were refused; ``str(error)`` is the text NodeODM answers."""


@cache
def node_options() -> tuple[dict[str, Any], ...]:
    """The node's options, in the node's order (read once from the packaged file)."""
    text = resources.files(__package__).joinpath("options.json").read_text(encoding="utf-8")
    return tuple(json.loads(text))


@cache
def node_options_body() -> bytes:
    """The ``GET /options`` body, serialised once because it never changes."""
    return dumps(list(node_options())).encode()


def parse_options_field(raw: Any) -> list[Any]:
    """Decode the ``options`` field: JSON text or an already decoded list; non-lists become []."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = parse_json(raw)
    return raw if isinstance(raw, list) else []


def _to_bool(value: Any) -> bool:
    if value is True or value in ("true", "1", 1):
        return True
    if value is False or value in ("false", "0", 0):
        return False
    raise OptionsError(f"Cannot convert {js_str(value)} to boolean")


def _convert(kind: str, value: Any) -> Any:
    if kind == "int":
        return parse_int(value)
    if kind == "float":
        return parse_float(value)
    if kind == "bool":
        return _to_bool(value)
    return value if isinstance(value, str) else dumps(value)


_COMPARISONS = {
    ">=": lambda x, b: x >= b,
    ">": lambda x, b: x > b,
    "<": lambda x, b: x < b,
    "<=": lambda x, b: x <= b,
}
_KIND = re.compile(r"^(positive |negative )?(integer|float)$")
_RANGE = re.compile(r"^(?:integer|float): ([-+.\d]+) <= x <= ([-+.\d]+)$")
_COMPARE = re.compile(r"^(?:integer|float) (>=|>|<|<=) ([-+.\d]+)$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _in_domain(domain: str, value: Any) -> bool | None:
    """Whether ``value`` fits a textual domain; None when the domain is not understood."""
    if match := _KIND.match(domain):
        if not _is_number(value):
            return False
        if match.group(1) == "positive ":
            return bool(value >= 0)
        if match.group(1) == "negative ":
            return bool(value <= 0)
        return float(value).is_integer() if match.group(2) == "integer" else math.isfinite(value)
    if domain == "percent":
        return _is_number(value) and 0 <= value <= 100
    if match := _RANGE.match(domain):
        return _is_number(value) and float(match.group(1)) <= value <= float(match.group(2))
    if match := _COMPARE.match(domain):
        return _is_number(value) and bool(
            _COMPARISONS[match.group(1)](value, float(match.group(2)))
        )
    if domain in ("string", "path"):
        return True
    if domain == "json":
        try:
            json.loads(value)
        except (TypeError, ValueError):
            return False
        return True
    return None


def _check(option: dict[str, Any], value: Any) -> str | None:
    """The error text for ``value`` against the option's domain, or None when it fits."""
    domain = option["domain"]
    if isinstance(domain, list):
        return None if js_str(value) in domain else f"Invalid value {js_str(value)} (not in enum)"
    if domain == "":
        return None
    fits = _in_domain(domain, value)
    if fits is None:
        return f"Domain value cannot be handled: '{domain}' : '{js_str(value)}'"
    return None if fits else f"Invalid value {js_str(value)} (out of range)"


def validate_options(raw: Any, max_concurrency: int | None = None) -> list[dict[str, Any]]:
    """Typed ``[{name, value}]`` in the node's order; unknown names dropped, as NodeODM does.

    Raises OptionsError with NodeODM's error string when any value is refused.
    """
    given: dict[str, Any] = {}
    for item in parse_options_field(raw):
        if isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item:
            given.setdefault(item["name"], item["value"])
    result: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for option in node_options():
        name = option["name"]
        if name not in given:
            continue
        try:
            value = _convert(option["type"], given[name])
            problem = _check(option, value)
        except OptionsError as error:
            problem = str(error)
        if problem is None:
            result.append({"name": name, "value": value})
        else:
            errors.append({"name": name, "error": problem})
    if errors:
        raise OptionsError(dumps(errors))
    if max_concurrency is not None:
        _cap_concurrency(result, max_concurrency)
    return result


def _cap_concurrency(options: list[dict[str, Any]], cap: int) -> None:
    for option in options:
        if option["name"] == "max-concurrency":
            option["value"] = min(option["value"], cap)
            return
    options.append({"name": "max-concurrency", "value": cap})


def with_post_processing_defaults(options: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append ``pc-ept``, ``cog``, ``gltf`` = true when the node has them and they are not given."""
    known = {option["name"] for option in node_options()}
    present = {option["name"] for option in options}
    extra = [
        {"name": name, "value": True}
        for name in POST_PROCESSING_DEFAULTS
        if name in known and name not in present
    ]
    return [*options, *extra]
