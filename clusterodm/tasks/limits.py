"""A user's option rules applied to the option list and to task options. Pure: no I/O.

The rules are the original's limits JSON, one entry per option name::

    {"feature-quality": {"domain": ["medium", "low"]},
     "min-num-features": {"between": {"min": 1000, "max": 20000, "max_if_equal_to": 0}},
     "dsm": {"value": true, "assure": true},
     "split": {"remove": true}}

- ``remove``: the option is hidden from ``/options`` and dropped from a task's options.
- ``domain``: replaces the node's domain; values outside it are refused at init.
- ``between``: ``min``/``max`` clamp the value (``max_if_equal_to``: that value means ``max``);
  ``/options`` shows the range as the domain.
- ``value``: shown as the default; a client's value for the option is replaced by it.
  Original: only the default shown, and ``true`` forced on booleans; here always forced,
  so a client cannot step around it.
- ``assure`` (with ``value``): the option is sent with every task, asked for or not.

``max-concurrency`` is hidden from users with limits (as the original) unless a rule names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clusterodm.access.base import Limits
from clusterodm.tasks.options import Option, validate_options

HIDDEN_WHEN_LIMITED = ("max-concurrency",)
RULE_KEYS = frozenset({"remove", "value", "domain", "between", "assure"})
BETWEEN_KEYS = frozenset({"min", "max", "max_if_equal_to"})
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class OptionRule:
    remove: bool = False
    value: Any = _UNSET
    domain: Any = _UNSET  # list of choices or a NodeODM domain string
    min: float | None = None
    max: float | None = None
    max_if_equal_to: Any = _UNSET
    assure: bool = False

    @property
    def has_value(self) -> bool:
        return self.value is not _UNSET

    @property
    def has_domain(self) -> bool:
        return self.domain is not _UNSET


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a number, not {value!r}")
    return value


def parse_rule(name: str, raw: Any) -> OptionRule:
    """One option's rule; ValueError naming the option and the problem."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"option {name!r}: a rule must be a table, not {raw!r}")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise ValueError(f"option {name!r}: unknown rule {sorted(unknown)[0]!r}")
    domain = raw.get("domain", _UNSET)
    if domain is not _UNSET and not isinstance(domain, list | str):
        raise ValueError(f"option {name!r}: domain must be a list or a string")
    lo = hi = None
    cap: Any = _UNSET
    between = raw.get("between")
    if between is not None:
        if not isinstance(between, Mapping) or set(between) - BETWEEN_KEYS:
            raise ValueError(f"option {name!r}: between takes min, max and max_if_equal_to")
        if "min" in between:
            lo = _number(f"option {name!r}: between.min", between["min"])
        if "max" in between:
            hi = _number(f"option {name!r}: between.max", between["max"])
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"option {name!r}: between.min is above between.max")
        cap = between.get("max_if_equal_to", _UNSET)
    assure = raw.get("assure", False)
    if not isinstance(assure, bool) or not isinstance(raw.get("remove", False), bool):
        raise ValueError(f"option {name!r}: remove and assure are true or false")
    if assure and "value" not in raw:
        raise ValueError(f"option {name!r}: assure needs a value")
    return OptionRule(
        remove=bool(raw.get("remove", False)),
        value=raw.get("value", _UNSET),
        domain=domain,
        min=lo,
        max=hi,
        max_if_equal_to=cap,
        assure=assure,
    )


def parse_rules(raw: Any) -> dict[str, OptionRule]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError("options must be a table of option name -> rule")
    return {str(name): parse_rule(str(name), rule) for name, rule in raw.items()}


def rules_of(limits: Limits) -> dict[str, OptionRule]:
    """The user's rules; providers check them when they load, so this does not fail."""
    try:
        return parse_rules(limits.options)
    except ValueError:
        return {}


def _limited(limits: Limits) -> bool:
    return bool(
        limits.options or limits.max_images is not None or limits.max_concurrent_tasks is not None
    )


def _hidden(name: str, rules: Mapping[str, OptionRule], limited: bool) -> bool:
    rule = rules.get(name)
    if rule is not None:
        return rule.remove
    return limited and name in HIDDEN_WHEN_LIMITED


def _range_domain(spec: Option, rule: OptionRule) -> str | None:
    kind = "integer" if spec.get("type") == "int" else "float"
    if spec.get("type") not in ("int", "float"):
        return None

    def fmt(x: float) -> str:
        return str(int(x)) if kind == "integer" or float(x).is_integer() else str(x)

    if rule.min is not None and rule.max is not None:
        return f"{kind}: {fmt(rule.min)} <= x <= {fmt(rule.max)}"
    if rule.min is not None:
        return f"{kind} >= {fmt(rule.min)}"
    if rule.max is not None:
        return f"{kind} <= {fmt(rule.max)}"
    return None


def _js_value(value: Any) -> Any:
    """Defaults in /options are strings, as NodeODM lists them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def limited_options(known: Sequence[Option], limits: Limits) -> list[Option]:
    """The reference node's option list as this user sees it (``/options``)."""
    rules = rules_of(limits)
    limited = _limited(limits)
    out: list[Option] = []
    for spec in known:
        name = str(spec.get("name"))
        if _hidden(name, rules, limited):
            continue
        option = dict(spec)
        rule = rules.get(name)
        if rule is not None:
            if rule.has_domain:
                option["domain"] = rule.domain
            elif (domain := _range_domain(spec, rule)) is not None:
                option["domain"] = domain
            if rule.has_value:
                option["value"] = _js_value(rule.value)
        out.append(option)
    return out


def _checkable(known: Sequence[Option], limits: Limits) -> list[Option]:
    """The list init validates against: like ``/options``, but ``between`` ranges are not
    domains there, since out-of-range values are clamped (as the original), not refused."""
    rules = rules_of(limits)
    limited = _limited(limits)
    out: list[Option] = []
    for spec in known:
        name = str(spec.get("name"))
        if _hidden(name, rules, limited):
            continue
        rule = rules.get(name)
        out.append({**spec, "domain": rule.domain} if rule and rule.has_domain else spec)
    return out


def check_options(
    options: Sequence[Option], known: Sequence[Option], limits: Limits
) -> list[Option]:
    """Init: validate a client's options against the user's view, then apply the rules.

    Hidden options are dropped (as NodeODM drops unknown names); values outside a rule's
    domain are refused with NodeODM's error list (InvalidRequest).
    """
    checked = validate_options(options, _checkable(known, limits))
    return enforce(checked, limits)


def _clamp(value: Any, rule: OptionRule) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if rule.max_if_equal_to is not _UNSET and rule.max is not None:
        if value == rule.max_if_equal_to:
            value = rule.max
    if rule.min is not None:
        value = max(rule.min, value)
    if rule.max is not None:
        value = min(rule.max, value)
    return value


def enforce(options: Sequence[Option], limits: Limits) -> list[Option]:
    """Commit and dispatch: drop hidden options, clamp ``between``, force ``value``s and add
    ``assure``d ones. Idempotent, so it can run at init and again at commit."""
    rules = rules_of(limits)
    limited = _limited(limits)
    out: list[Option] = []
    seen: set[str] = set()
    for o in options:
        name = str(o.get("name"))
        rule = rules.get(name)
        if rule is not None and rule.assure:
            continue  # added below with its value
        if _hidden(name, rules, limited):
            continue
        value = o.get("value")
        if rule is not None:
            value = rule.value if rule.has_value else _clamp(value, rule)
        out.append({"name": name, "value": value})
        seen.add(name)
    for name, rule in rules.items():
        if rule.assure and name not in seen:
            out.append({"name": name, "value": rule.value})
    return out
