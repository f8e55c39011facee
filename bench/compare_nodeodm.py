"""Send the same requests to a real NodeODM (``--test``) and to a simnode and diff the answers.

Not part of the test suite (CI has no NodeODM). Start four servers, two of each kind, then run::

    node index.js --test --port 3921 --test_seconds 2                                # NodeODM
    node index.js --test --port 3922 --test_seconds 2 --token secret --max_images 3  # (2nd copy)
    python -m clusterodm.simnode --port 3931 --test_seconds 2
    python -m clusterodm.simnode --port 3932 --test_seconds 2 --token secret --max_images 3
    python -m bench.compare_nodeodm --real 3921 --real-limited 3922 --sim 3931 --sim-limited 3932

Two NodeODM instances need two working folders (it keeps ``tests/data`` and ``tmp`` in its
current directory). Every step records the HTTP status, the headers clients look at, and the
body reduced to its shape (keys and value types) with error texts, ``success``, status codes and a
few computed facts kept verbatim. Steps that differ are printed side by side; steps listed in
``DELIBERATE`` are the differences documented in docs/simnode.md. Exit status 1 if any other step
differs. ``--json FILE`` writes both records.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
import time
import uuid as uuidlib
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "Accept-Ranges",
    "Content-Range",
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Keep-Alive",
    "Cache-Control",
)
#: Body keys whose values are compared, not only their types.
KEEP = {"error", "success", "noRetry", "code", "errorMessage", "version", "engine"}
#: Known differences: deliberate ones and remaining ones (docs/simnode.md).
DELIBERATE = {
    "download range": "Range works on simnode (206); NodeODM ignores it",
    "download range unsatisfiable": "simnode answers 416; NodeODM ignores Range",
    "download GET all.zip": "simnode adds Accept-Ranges: bytes",
    "download HEAD all.zip": "simnode adds Accept-Ranges: bytes",
    "info while running": "progress climbs on simnode; NodeODM's test mode shows 0",
    "info after cancel, settled": "NodeODM's test mode keeps running a cancelled task",
    "pyodm zip members": "all.zip content is generated on simnode",
    "output while running": "output advances on simnode; NodeODM appends all lines at once",
    "output after restart": "output advances on simnode; NodeODM appends all lines at once",
    "download with outputs": "simnode adds Accept-Ranges: bytes",
    "info after restart": "processingTime counts ms live on simnode; NodeODM shows -1 for 1 s",
    # Remaining differences that clients do not depend on (docs/simnode.md):
    "GET /": "simnode serves a one-line page, not NodeODM's web UI",
    "no token GET /": "simnode serves a one-line page, not NodeODM's web UI",
    "OPTIONS preflight": "aiohttp sends no Content-Length on 204, as RFC 9110 asks",
    "OPTIONS without request headers": "aiohttp sends no Content-Length on 204",
    "no token preflight": "aiohttp sends no Content-Length on 204",
}
JPEG = b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9"
ENDED = (30, 40, 50)


def mask(text: str) -> str:
    return UUID_RE.sub("<uuid>", text)


def shape(value: Any, key: str | None = None) -> Any:
    """Keys and value types, keeping the values that clients compare (see KEEP)."""
    if key in KEEP and not isinstance(value, dict | list):
        return mask(value) if isinstance(value, str) else value
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes: list[Any] = []
        for item in value:
            item_shape = shape(item)
            if item_shape not in shapes:
                shapes.append(item_shape)
        return shapes
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def record(response: requests.Response, **facts: Any) -> dict[str, Any]:
    """What a client can see of an answer (minus values that change from run to run)."""
    headers = {h: response.headers[h] for h in HEADERS if h in response.headers}
    if "Content-Disposition" in headers or response.status_code == 204:
        headers["Content-Length?"] = "Content-Length" in response.headers
    entry: dict[str, Any] = {"status": response.status_code, "headers": headers}
    kind = response.headers.get("Content-Type", "")
    if response.request.method == "HEAD" or not response.content:
        entry["body"] = f"<{len(response.content)} bytes>"
    elif "json" in kind:
        try:
            entry["body"] = shape(response.json())
        except ValueError:
            entry["body"] = f"<not JSON: {response.text[:60]!r}>"
    elif kind.startswith("text/html") and response.status_code == 404:
        entry["body"] = mask(response.text)
    elif response.content[:2] == b"PK":
        entry["body"] = "<zip>"
    else:
        entry["body"] = f"<{kind or 'no type'}, {len(response.content)} bytes>"
    entry.update(facts)
    return entry


class Client:
    """One server under test; ``steps`` collects the records in order."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.http = requests.Session()
        self.steps: dict[str, dict[str, Any]] = {}

    def url(self, path: str, token: bool = True) -> str:
        url = self.base + path
        if token and self.token:
            url += ("&" if "?" in url else "?") + f"token={self.token}"
        return url

    def call(self, method: str, path: str, token: bool = True, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, self.url(path, token), **kwargs)

    def step(self, name: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        facts = kwargs.pop("facts", None)
        response = self.call(method, path, **kwargs)
        self.steps[name] = record(response, **(facts(response) if facts else {}))
        return response

    def note(self, name: str, **facts: Any) -> None:
        self.steps[name] = facts

    def info(self, uuid: str) -> dict[str, Any]:
        body: dict[str, Any] = self.call("GET", f"/task/{uuid}/info").json()
        return body

    def wait(self, uuid: str, until: Callable[[dict[str, Any]], bool], limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if until(self.info(uuid)):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.base}: task {uuid} never reached the wanted state")

    def wait_end(self, uuid: str) -> None:
        self.wait(uuid, lambda i: i.get("status", {}).get("code") in ENDED)


def images(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, JPEG, "image/jpeg")) for name in names]


def fields(**values: str) -> dict[str, tuple[None, str]]:
    """A multipart body of text fields only."""
    return {key: (None, value) for key, value in values.items()}


def early(response: requests.Response) -> dict[str, Any]:
    """Right after creation: options and status depend on how far initialisation got."""
    body = response.json()
    return {"body": sorted(body), "name": body.get("name"), "status code": "10 or 20"}


def chunked(c: Client, n_images: int, **init_fields: str) -> str:
    """init, one upload per image, commit; returns the uuid."""
    uuid = c.call("POST", "/task/new/init", files=fields(**init_fields)).json()["uuid"]
    for i in range(n_images):
        c.call("POST", f"/task/new/upload/{uuid}", files=images(f"img{i}.jpg"))
    c.call("POST", f"/task/new/commit/{uuid}")
    return uuid


def opts(*pairs: tuple[str, Any]) -> str:
    return json.dumps([{"name": n, "value": v} for n, v in pairs])


# -- scenarios ------------------------------------------------------------------------------------


def static_routes(c: Client) -> None:
    page = c.step("GET /", "GET", "/", facts=lambda r: {"ETag": r.headers["ETag"][:3]})
    c.step(
        "GET / If-None-Match",
        "GET",
        "/",
        headers={"If-None-Match": page.headers.get("ETag", "")},
        facts=lambda r: {
            "ETag": "ETag" in r.headers,
            "Content-Type": r.headers.get("Content-Type"),
        },
    )
    c.step(
        "HEAD /",
        "HEAD",
        "/",
        facts=lambda r: {"length": r.headers.get("Content-Length") is not None},
    )
    c.step("GET /info", "GET", "/info")
    c.step("GET /info _debugUnauthorized", "GET", "/info?_debugUnauthorized=1")
    c.step(
        "GET /options",
        "GET",
        "/options",
        facts=lambda r: {"names": [o["name"] for o in r.json()], "exact": r.json()},
    )
    c.step("GET /auth/info", "GET", "/auth/info")
    c.step("POST /auth/login", "POST", "/auth/login", data={"username": "a", "password": "b"})
    c.step("POST /auth/register", "POST", "/auth/register")
    c.step("GET /task/list", "GET", "/task/list", facts=lambda r: {"body": "list"})
    c.step("404 GET /nope", "GET", "/nope")
    c.step("404 POST /info", "POST", "/info")
    c.step("404 GET /task/new", "GET", "/task/new")
    c.step("404 PUT /task/list", "PUT", "/task/list")
    c.step("404 GET download without asset", "GET", f"/task/{uuidlib.uuid4()}/download")
    preflight = {
        "Origin": "http://example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "set-uuid,content-type",
    }
    c.step("OPTIONS preflight", "OPTIONS", "/task/new/init", headers=preflight)
    c.step("OPTIONS without request headers", "OPTIONS", "/info", headers={"Origin": "http://x"})


def unknown_uuid(c: Client) -> None:
    u = str(uuidlib.uuid4())
    c.step("unknown info", "GET", f"/task/{u}/info")
    c.step("unknown info with_output", "GET", f"/task/{u}/info?with_output=0")
    c.step("unknown output", "GET", f"/task/{u}/output")
    c.step("unknown download all.zip", "GET", f"/task/{u}/download/all.zip")
    c.step("unknown download other asset", "GET", f"/task/{u}/download/orthophoto.tif")
    c.step("unknown info, not a uuid", "GET", "/task/abc/info")
    for action in ("cancel", "remove", "restart"):
        c.step(f"{action} unknown (form)", "POST", f"/task/{action}", data={"uuid": u})
        c.step(f"{action} unknown (json)", "POST", f"/task/{action}", json={"uuid": u})
        c.step(f"{action} no uuid", "POST", f"/task/{action}", data={})
        c.step(f"{action} no body", "POST", f"/task/{action}")
        c.step(
            f"{action} malformed json",
            "POST",
            f"/task/{action}",
            data="{uuid",
            headers={"Content-Type": "application/json"},
        )
    c.step("upload unknown", "POST", f"/task/new/upload/{u}", files=images("a.jpg"))
    c.step("commit unknown", "POST", f"/task/new/commit/{u}")


def init_errors(c: Client) -> None:
    def init(name: str, **kwargs: Any) -> requests.Response:
        return c.step(name, "POST", "/task/new/init", **kwargs)

    init("init multipart, no fields", files=fields(skipPostProcessing="false"))
    init("init json body (ignored)", json={"name": "x", "options": "[{"})
    init("init urlencoded body (ignored)", data={"name": "x", "options": "[{"})
    init("init options bad json", files=fields(options="[{"))
    init("init options bad json 2", files=fields(options="nope"))
    init("init options NaN", files=fields(options="NaN"))
    init("init options long bad json", files=fields(options=opts(("crop", 1)) + "x"))
    init("init options number", files=fields(options="12"))
    init("init outputs bad json", files=fields(outputs="[x"))
    init("init options not a list", files=fields(options='{"a": 1}'))
    init("init options unknown name", files=fields(options=opts(("no-such", 1))))
    init("init enum invalid", files=fields(options=opts(("feature-type", "foo"))))
    init("init int out of range", files=fields(options=opts(("mesh-octree-depth", 20))))
    init("init positive int negative", files=fields(options=opts(("max-concurrency", -1))))
    init("init int not a number", files=fields(options=opts(("min-num-features", "abc"))))
    init("init float not a number", files=fields(options=opts(("crop", "abc"))))
    init("init float > 0 zero", files=fields(options=opts(("orthophoto-resolution", 0))))
    init("init bool invalid", files=fields(options=opts(("fast-orthophoto", "maybe"))))
    init("init json domain invalid", files=fields(options=opts(("cameras", "{bad"))))
    init(
        "init two invalid",
        files=fields(options=opts(("feature-type", "x"), ("mesh-octree-depth", 0))),
    )
    init("init valid options", files=fields(options=opts(("orthophoto-resolution", 2))))
    init("init set-uuid invalid", files=fields(name="a"), headers={"set-uuid": "nope"})
    init(
        "init set-uuid v4 uppercase",
        files=fields(name="a"),
        headers={"set-uuid": str(uuidlib.uuid4()).upper()},
    )
    init(
        "init set-uuid wrong version",
        files=fields(name="a"),
        headers={"set-uuid": "12345678-1234-8234-8234-123456789012"},
    )


def uploads_and_commits(c: Client) -> None:
    u = str(uuidlib.uuid4())
    c.step(
        "init set-uuid", "POST", "/task/new/init", files=fields(name="s"), headers={"set-uuid": u}
    )
    c.step("upload no file", "POST", f"/task/new/upload/{u}", files=fields(x="y"))
    c.step("upload no body", "POST", f"/task/new/upload/{u}")
    c.step(
        "upload wrong field",
        "POST",
        f"/task/new/upload/{u}",
        files=[("other", ("a.jpg", JPEG, "image/jpeg"))],
    )
    c.step("upload one", "POST", f"/task/new/upload/{u}", files=images("a.jpg"))
    c.step("upload two + text", "POST", f"/task/new/upload/{u}", files=images("b.jpg", "a.jpg"))
    c.step(
        "re-init staged set-uuid", "POST", "/task/new/init", files=fields(), headers={"set-uuid": u}
    )
    c.step("commit", "POST", f"/task/new/commit/{u}")
    c.step("commit again", "POST", f"/task/new/commit/{u}")
    c.step("upload after commit", "POST", f"/task/new/upload/{u}", files=images("c.jpg"))
    c.step(
        "init set-uuid of a task", "POST", "/task/new/init", files=fields(), headers={"set-uuid": u}
    )
    c.step(
        "info right after commit",
        "GET",
        f"/task/{u}/info",
        facts=lambda r: {"imagesCount": r.json().get("imagesCount")},
    )
    c.wait(
        u,
        lambda i: (
            "pc-ept" in [o["name"] for o in i.get("options", [])] or i["status"]["code"] != 20
        ),
    )
    c.step(
        "info after initialisation",
        "GET",
        f"/task/{u}/info",
        facts=lambda r: {
            "imagesCount": r.json().get("imagesCount"),
            "options": [o["name"] for o in r.json().get("options", [])],
        },
    )
    empty = c.call("POST", "/task/new/init", files=fields()).json()["uuid"]
    c.step("commit without files", "POST", f"/task/new/commit/{empty}")
    c.step("upload after failed commit", "POST", f"/task/new/upload/{empty}", files=images("a.jpg"))
    c.step("/task/new no files", "POST", "/task/new", files=fields(name="n"))
    c.step("/task/new no body", "POST", "/task/new")
    c.step("/task/new zipurl empty", "POST", "/task/new", files=fields(zipurl=""))
    c.step(
        "/task/new bad option",
        "POST",
        "/task/new",
        files=[*images("a.jpg"), ("options", (None, opts(("feature-type", "x"))))],
    )
    c.step(
        "/task/new set-uuid invalid",
        "POST",
        "/task/new",
        files=images("a.jpg"),
        headers={"set-uuid": "bad"},
    )
    c.step(
        "/task/new wrong file field",
        "POST",
        "/task/new",
        files=[("other", ("a.jpg", JPEG, "image/jpeg"))],
    )
    made = c.step(
        "/task/new images",
        "POST",
        "/task/new",
        files=[("name", (None, "single")), *images("a.jpg", "b.jpg", "a.jpg")],
    )
    single = made.json()["uuid"]
    c.step("/task/new info", "GET", f"/task/{single}/info", facts=early)
    c.wait_end(single)


def task_fields(c: Client) -> None:
    no_name = chunked(c, 1, skipPostProcessing="true")
    empty_name = chunked(c, 1, name="", dateCreated="12345")
    bad_date = chunked(c, 1, name="d", dateCreated="abc", outputs='["odm_orthophoto"]')
    for label, uuid in (("name absent", no_name), ("name empty", empty_name)):
        c.step(
            f"info {label}",
            "GET",
            f"/task/{uuid}/info",
            facts=lambda r: {
                "has name": "name" in r.json(),
                "name pattern": bool(
                    re.match(r"^Task of \d{4}-\d\d-\d\dT", r.json().get("name", ""))
                ),
                "dateCreated 12345": r.json().get("dateCreated") == 12345,
            },
        )
    c.step(
        "info bad dateCreated",
        "GET",
        f"/task/{bad_date}/info",
        facts=lambda r: {"dateCreated recent": r.json()["dateCreated"] > 1e12},
    )
    for uuid in (no_name, empty_name, bad_date):
        c.wait_end(uuid)
    c.step(
        "options with skipPostProcessing",
        "GET",
        f"/task/{no_name}/info",
        facts=lambda r: {"options": r.json()["options"]},
    )
    c.step(
        "options without skipPostProcessing",
        "GET",
        f"/task/{empty_name}/info",
        facts=lambda r: {"options": r.json()["options"]},
    )
    c.step(
        "download with outputs",
        "GET",
        f"/task/{bad_date}/download/all.zip",
        facts=lambda r: {
            "top folders": sorted(
                {n.split("/")[0] for n in zipfile.ZipFile(io.BytesIO(r.content)).namelist()}
            )
        },
    )


def lifecycle(c: Client) -> None:
    u = chunked(c, 2, name="life")
    c.step("info at commit", "GET", f"/task/{u}/info", facts=early)
    c.step("download before run", "GET", f"/task/{u}/download/all.zip")

    def started(i: dict[str, Any]) -> bool:
        code = i["status"]["code"]
        return (code == 20 and i["processingTime"] != -1) or code in ENDED

    c.wait(u, started)
    c.step("info while running", "GET", f"/task/{u}/info")
    c.step(
        "output while running",
        "GET",
        f"/task/{u}/output",
        facts=lambda r: {"n>0": len(r.json()) > 0},
    )
    c.step("download while running", "GET", f"/task/{u}/download/all.zip")
    c.step("restart while running", "POST", "/task/restart", data={"uuid": u})
    c.wait_end(u)
    full = c.call("GET", f"/task/{u}/output").json()
    n = len(full)
    c.step(
        "info completed",
        "GET",
        f"/task/{u}/info",
        facts=lambda r: {"progress": r.json()["progress"]},
    )
    c.note("output last line", last=full[-1] if full else None)

    def length(expected: int) -> Callable[[requests.Response], dict[str, Any]]:
        return lambda r: {"as expected": len(r.json()) == expected}

    for query, expected in (
        ("", n),
        ("?line=0", n),
        ("?line=2", n - 2),
        ("?line=-3", 3),
        ("?line=-100000", n),
        ("?line=100000", 0),
        ("?line=abc", n),
        ("?line=2.7", n - 2),
        ("?line=-2.7", 2),
        ("?line=", n),
        ("?line=5abc", n - 5),
    ):
        c.step(
            f"output{query or ' (no line)'}",
            "GET",
            f"/task/{u}/output{query}",
            facts=length(expected),
        )
    for query, expected in (
        ("?with_output", n),
        ("?with_output=0", n),
        ("?with_output=-2", 2),
        ("?with_output=abc", n),
        ("?with_output=100000", 0),
    ):
        c.step(
            f"info{query}",
            "GET",
            f"/task/{u}/info{query}",
            facts=lambda r, e=expected: {
                "output as expected": len(r.json().get("output", [])) == e
            },
        )
    c.step("download GET all.zip", "GET", f"/task/{u}/download/all.zip")
    c.step("download HEAD all.zip", "HEAD", f"/task/{u}/download/all.zip")
    c.step("download range", "GET", f"/task/{u}/download/all.zip", headers={"Range": "bytes=0-9"})
    c.step(
        "download range unsatisfiable",
        "GET",
        f"/task/{u}/download/all.zip",
        headers={"Range": "bytes=999999999-"},
    )
    c.step("download other asset", "GET", f"/task/{u}/download/orthophoto.tif")
    c.step("download odd asset", "GET", f"/task/{u}/download/..%2Fbody.json")

    c.step("restart bad options", "POST", "/task/restart", data={"uuid": u, "options": "[{"})
    c.step(
        "restart invalid option",
        "POST",
        "/task/restart",
        data={"uuid": u, "options": opts(("feature-type", "x"))},
    )
    c.step(
        "restart with options",
        "POST",
        "/task/restart",
        data={"uuid": u, "options": opts(("fast-orthophoto", True))},
    )
    c.step(
        "info after restart",
        "GET",
        f"/task/{u}/info",
        facts=lambda r: {
            "options": r.json()["options"],
            "output": r.json()["output"] if "output" in r.json() else "absent",
            "processingTime": r.json()["processingTime"],
        },
    )
    c.step("output after restart", "GET", f"/task/{u}/output", facts=lambda r: {"n": len(r.json())})
    c.step("cancel running (json)", "POST", "/task/cancel", json={"uuid": u})
    c.step(
        "info after cancel",
        "GET",
        f"/task/{u}/info",
        facts=lambda r: {"pt": r.json()["processingTime"]},
    )
    c.step("cancel again", "POST", "/task/cancel", data={"uuid": u})
    time.sleep(3)
    c.step("info after cancel, settled", "GET", f"/task/{u}/info")
    c.step("restart cancelled", "POST", "/task/restart", data={"uuid": u})
    c.wait_end(u)
    c.step("cancel completed", "POST", "/task/cancel", data={"uuid": u})
    c.step("info completed then cancelled", "GET", f"/task/{u}/info")
    c.step("remove", "POST", "/task/remove", data={"uuid": u})
    c.step("info removed", "GET", f"/task/{u}/info")
    c.step("remove again", "POST", "/task/remove", data={"uuid": u})
    c.step(
        "list after remove",
        "GET",
        "/task/list",
        facts=lambda r: {"listed": {"uuid": u} in r.json()},
    )


def limited(c: Client) -> None:
    """Against nodes started with --token secret --max_images 3."""
    for path in ("/", "/info", "/options", "/task/list", "/auth/info", "/nope"):
        c.step(f"no token GET {path}", "GET", path, token=False)
    c.step("wrong token /info", "GET", "/info?token=wrong", token=False)
    c.step("token in header only", "GET", "/info", token=False, headers={"token": "secret"})
    c.step("no token _debugUnauthorized", "GET", "/info?_debugUnauthorized=1", token=False)
    c.step("token _debugUnauthorized", "GET", "/info?_debugUnauthorized=1")
    c.step("no token preflight", "OPTIONS", "/info", token=False, headers={"Origin": "http://x"})
    c.step("no token init", "POST", "/task/new/init", token=False, files=fields(name="x"))
    c.step("no token cancel", "POST", "/task/cancel", token=False, data={"uuid": "x"})
    c.step("token GET /info", "GET", "/info")
    c.step(
        "/task/new 4 images", "POST", "/task/new", files=images("1.jpg", "2.jpg", "3.jpg", "4.jpg")
    )
    c.step(
        "/task/new 3 images + 2 txt",
        "POST",
        "/task/new",
        files=[*images("1.jpg", "2.jpg", "3.jpg"), ("images", ("gcp.txt", b"x", "text/plain"))],
    )
    ok = c.step("/task/new 3 images", "POST", "/task/new", files=images("1.jpg", "2.jpg", "3.jpg"))
    uuid = chunked(c, 4, name="too many")
    c.wait_end(uuid)
    c.step(
        "chunked 4 images, ended",
        "GET",
        f"/task/{uuid}/info",
        facts=lambda r: {"progress": r.json()["progress"]},
    )
    c.step(
        "upload no token", "POST", f"/task/new/upload/{uuid}", token=False, files=images("a.jpg")
    )
    c.wait_end(ok.json()["uuid"])


def with_pyodm(c: Client, dest: Path) -> None:
    from pyodm import Node  # type: ignore[import-untyped]
    from pyodm.exceptions import NodeResponseError  # type: ignore[import-untyped]

    node = Node.from_url(c.base + (f"?token={c.token}" if c.token else ""))
    files = []
    for name in ("p1.jpg", "p2.jpg"):
        path = dest / name
        path.write_bytes(JPEG)
        files.append(str(path))
    task = node.create_task(files, {"orthophoto-resolution": 2, "fast-orthophoto": True}, name="py")
    first = task.info()
    task.wait_for_completion(interval=0.5)
    info = task.info(with_output=-2)
    out = dest / "out"
    task.download_assets(str(out))
    c.note(
        "pyodm task",
        code_at_create=first.status.value,
        code=info.status.value,
        options=sorted(o["name"] for o in info.options),
        output_len=len(info.output),
        images_count=info.images_count,
        last_output=task.output(-1),
    )
    c.note("pyodm zip members", top=sorted(p.name for p in out.iterdir()))
    c.note("pyodm node info", version=node.info().version, options=len(node.options()))
    try:
        node.get_task(str(uuidlib.uuid4())).info()
        c.note("pyodm unknown task", error=None)
    except NodeResponseError as error:
        c.note("pyodm unknown task", error=mask(str(error)))
    try:
        node.create_task(files, {"feature-type": "nope"})
        c.note("pyodm bad option", error=None)
    except NodeResponseError as error:
        c.note("pyodm bad option", error=mask(str(error)))


# -- running and diffing --------------------------------------------------------------------------

PLAIN = (static_routes, unknown_uuid, init_errors, uploads_and_commits, task_fields, lifecycle)


def run(base: str, limited_base: str, dest: Path) -> dict[str, dict[str, Any]]:
    plain = Client(base)
    for scenario in PLAIN:
        scenario(plain)
    with_pyodm(plain, dest)
    token = Client(limited_base, token="secret")
    limited(token)
    return {**plain.steps, **{f"[limited] {k}": v for k, v in token.steps.items()}}


def port_url(value: str) -> str:
    return f"http://127.0.0.1:{value}" if value.isdigit() else value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--real", required=True, type=port_url, help="NodeODM --test (url or port)")
    parser.add_argument("--real-limited", required=True, type=port_url, help="NodeODM, token+max")
    parser.add_argument("--sim", required=True, type=port_url, help="simnode (url or port)")
    parser.add_argument("--sim-limited", required=True, type=port_url, help="simnode, token+max")
    parser.add_argument("--json", type=Path, help="write both records to this file")
    parser.add_argument("--all", action="store_true", help="print equal steps too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        (Path(tmp) / "real").mkdir()
        (Path(tmp) / "sim").mkdir()
        real_job = pool.submit(run, args.real, args.real_limited, Path(tmp) / "real")
        sim_job = pool.submit(run, args.sim, args.sim_limited, Path(tmp) / "sim")
        real, sim = real_job.result(), sim_job.result()
    if args.json:
        args.json.write_text(json.dumps({"nodeodm": real, "simnode": sim}, indent=1))
    unexpected = 0
    for name in dict.fromkeys([*real, *sim]):
        a, b = real.get(name), sim.get(name)
        if a == b:
            if args.all:
                print(f"same   {name}")
            continue
        reason = DELIBERATE.get(name.removeprefix("[limited] "))
        unexpected += reason is None
        print(f"{'known ' if reason else 'DIFF  '} {name}" + (f"  ({reason})" if reason else ""))
        for label, value in (("nodeodm", a), ("simnode", b)):
            print(f"    {label}: {json.dumps(value, sort_keys=True)[:1500]}")
    print(f"{len(real)} steps, {unexpected} unexpected differences")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
