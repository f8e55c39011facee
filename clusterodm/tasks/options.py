"""Processing options: parse, validate against the reference node's list, augment. Pure.

Validation follows NodeODM's rules, so a client gets the same answer from the cluster as from a
node: unknown names are dropped, values are typed (int, float, bool), domains are checked, and all
failures come back together as one JSON list of ``{name, error}``.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from clusterodm.errors import InvalidRequest
from clusterodm.tasks import jsjson

Option = dict[str, Any]

_RANGE = re.compile(r"^(integer|float)\s*:\s*([^\s<=]+)\s*<=\s*x\s*<=\s*([^\s<=]+)\s*$")
_COMPARE = re.compile(r"^(integer|float)\s*(>=|>|<=|<)\s*([^\s]+)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
_INT_PREFIX = re.compile(r"^\s*([+-]?\d+)", re.ASCII)  # parseInt reads ASCII digits only
_FLOAT_PREFIX = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", re.ASCII)


def parse_options(raw: Any) -> list[Option]:
    """The ``options`` field as a list: JSON text or list; anything else becomes []."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = jsjson.loads(raw)
        except jsjson.JsJsonError as e:  # the original's (V8's) words
            raise InvalidRequest(str(e)) from None
        except (ValueError, RecursionError):  # a number past 4,300 digits, nesting too deep
            raise InvalidRequest("Invalid options: too deeply nested or too large") from None
    if not isinstance(raw, list):
        return []
    return [o for o in raw if isinstance(o, dict) and isinstance(o.get("name"), str)]


def _as_float(value: int | float) -> float:
    """A JSON number as JavaScript holds it: integers past the float range are +-Infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _parse_int(value: Any) -> float:
    """``parseInt`` as NodeODM applies it: digits past the float range give Infinity (float()
    of the digits, which never meets Python's limit on int() of long strings)."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int):
        return _as_float(value)
    if isinstance(value, float):
        return float(int(value)) if math.isfinite(value) else math.nan
    m = _INT_PREFIX.match(str(value))
    return float(m.group(1)) if m else math.nan


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int | float):
        return _as_float(value)
    m = _FLOAT_PREFIX.match(str(value))
    return float(m.group(1)) if m else math.nan


def _to_bool(value: Any) -> bool:
    if value is True or value in ("true", "1", 1):
        return True
    if value is False or value in ("false", "0", 0):
        return False
    raise ValueError(f"Cannot convert {value} to boolean")


def _typed(kind: str, value: Any) -> Any:
    if kind == "int":
        v = _parse_int(value)
        return int(v) if math.isfinite(v) else v
    if kind == "float":
        return _parse_float(value)
    if kind == "bool":
        return _to_bool(value)
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_domain(domain: Any, value: Any) -> str | None:
    """None if ``value`` fits ``domain``, else NodeODM's error text."""
    if isinstance(domain, list):
        return None if value in domain else f"Invalid value {_fmt(value)} (not in enum)"
    d = str(domain).strip()
    number_ok = isinstance(value, int | float) and not isinstance(value, bool)
    finite = number_ok and math.isfinite(value)
    out_of_range = f"Invalid value {_fmt(value)} (out of range)"
    if d in ("", "string", "path"):
        return None
    if d in ("integer", "float"):
        return None if finite else out_of_range
    if d in ("positive integer", "positive float"):
        return None if finite and value >= 0 else out_of_range
    if d in ("negative integer", "negative float"):
        return None if finite and value <= 0 else out_of_range
    if d == "percent":
        return None if finite and 0 <= value <= 100 else out_of_range
    if d == "json":
        try:
            json.loads(value if isinstance(value, str) else json.dumps(value))
        except (TypeError, ValueError):
            return f"Invalid value {_fmt(value)} (not valid JSON)"
        return None
    if m := _RANGE.match(d):
        lo, hi = float(m.group(2)), float(m.group(3))
        return None if finite and lo <= value <= hi else out_of_range
    if m := _COMPARE.match(d):
        return None if finite and _OPS[m.group(2)](value, float(m.group(3))) else out_of_range
    return f"Domain value cannot be handled: '{d}' : '{_fmt(value)}'"


def validate_options(options: Sequence[Option], known: Sequence[Option]) -> list[Option]:
    """Options typed and checked against ``known`` (the reference node's /options), in its order.

    Unknown names are dropped, as NodeODM does. Raises InvalidRequest holding the JSON list of
    every failure.
    """
    given: dict[str, Any] = {}
    for o in options:
        given[str(o["name"])] = o.get("value")
    errors: list[dict[str, str]] = []
    out: list[Option] = []
    for spec in known:
        name = spec.get("name")
        if name not in given:
            continue
        try:
            value = _typed(str(spec.get("type", "string")), given[name])
        except ValueError as e:
            errors.append({"name": name, "error": str(e)})
            continue
        problem = _check_domain(spec.get("domain", ""), value)
        if problem:
            errors.append({"name": name, "error": problem})
        else:
            out.append({"name": name, "value": value})
    if errors:
        raise InvalidRequest(json.dumps(errors, separators=(",", ":")))
    return out


def has_option(options: Sequence[Option], name: str) -> bool:
    return any(o.get("name") == name for o in options)


def apply_splitmerge(
    options: Sequence[Option], cluster_url: str, token: str, enabled: bool
) -> list[Option]:
    """Point ODM's split-merge at the cluster (``sm-cluster``), or strip it when disabled.

    With ``split`` in the options, ``sm-cluster`` is set to the cluster's own URL (with the
    user's token), so a node sends its submodels back through the cluster.
    """
    rest = [o for o in options if o.get("name") != "sm-cluster"]
    if not enabled or not has_option(rest, "split"):
        return rest
    url = cluster_url.rstrip("/")
    if token:
        url += "/?" + urlencode({"token": token})
    return [*rest, {"name": "sm-cluster", "value": url}]
