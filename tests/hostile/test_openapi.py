"""``docs/openapi.json`` describes the API as the proxy serves it: the same routes and methods
as ``proxy/endpoints.py``, the same public routes as the middleware, the same query parameters
passed on to nodes as ``nodes/paths.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from clusterodm import API_VERSION
from clusterodm.nodes.paths import ASSETS, QUERY_ALLOWED
from clusterodm.proxy.endpoints import ROUTES
from clusterodm.proxy.middleware import PUBLIC_PATHS

SPEC = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())


def served() -> set[tuple[str, str]]:
    out = set()
    for route in ROUTES:
        path = route.path
        if m := re.fullmatch(r"/task/\{action:([a-z|]+)\}", path):
            out |= {(route.method.lower(), f"/task/{a}") for a in m.group(1).split("|")}
        elif path.startswith("/{path:"):
            out.add((route.method.lower(), "/{uiFile}"))
        else:
            out.add((route.method.lower(), path))
    return out


def test_the_description_lists_exactly_the_routes_served() -> None:
    described = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
    assert described == served()
    assert SPEC["info"]["version"] == API_VERSION


def test_public_routes_and_passed_query_parameters_match() -> None:
    public = {
        p for p, ops in SPEC["paths"].items() if all(o.get("security") == [] for o in ops.values())
    }
    assert public == (PUBLIC_PATHS - {"/"}) | {"/", "/{uiFile}"}
    for route in ("info", "output"):
        op = SPEC["paths"][f"/task/{{uuid}}/{route}"]["get"]
        query = {p["name"] for p in op["parameters"] if p.get("in") == "query"}
        assert query - {"token"} == set(QUERY_ALLOWED[route])
    download = SPEC["paths"]["/task/{uuid}/download/{asset}"]["get"]
    asset = next(p for p in download["parameters"] if p.get("name") == "asset")
    assert set(asset["schema"]["enum"]) == set(ASSETS)
