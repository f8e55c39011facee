"""``/task/new*``, ``/task/list``, ``/task/<uuid>/*`` and ``/task/cancel|remove|restart``.

Each handler turns HTTP into a call on the intake, the dispatcher or the owning node, and back.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from clusterodm.errors import InvalidRequest, NodeUnreachable, refused
from clusterodm.model import Node, TaskEntry, parse_line
from clusterodm.nodes import paths
from clusterodm.nodes.paths import QUERY_ALLOWED, NodePath
from clusterodm.proxy.deps import deps, user_of
from clusterodm.proxy.formdata import (
    FormPart,
    FormReader,
    fields_without_files,
    form_reader,
)
from clusterodm.proxy.forward import forward, forward_poll
from clusterodm.results import S3Downloads, s3_asset_url
from clusterodm.tasks.intake import FilePart


def cluster_url(request: web.Request) -> str:
    """This cluster's public URL, for split-merge: ``--public-address`` or the request's host."""
    configured = deps(request).settings.public_address
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}"


class ImageParts:
    """The files of an upload form as the intake takes them (``UploadBody``): text parts go to
    ``fields`` when given, else are skipped; a file in any field but ``images`` is refused."""

    def __init__(
        self,
        reader: FormReader,
        first: FormPart | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        self.reader = reader
        self.first = first
        self.fields = fields
        self.content_type = reader.content_type
        self.content_length = reader.content_length

    @property
    def unread(self) -> bool:
        return self.reader.unread and self.first is None

    async def __aiter__(self) -> AsyncIterator[FilePart]:
        reader = self.reader
        part = self.first or await reader.next()
        while part is not None:
            if part.filename is not None:
                if part.name != "images":
                    raise InvalidRequest("Unexpected field")
                yield FilePart(part.filename, reader.chunks())
            elif self.fields is not None and part.name:
                self.fields[part.name] = await reader.text(part.name)
            part = await reader.next()


async def task_new_init(request: web.Request) -> web.Response:
    d, user = deps(request), user_of(request)
    fields: dict[str, str] = {}
    reader = form_reader(request)
    if reader is not None:
        while (part := await reader.next()) is not None:
            if part.filename is None and part.name:
                fields[part.name] = await reader.text(part.name)
    else:
        fields = await fields_without_files(request)
    uuid = await d.intake.init(user, fields, request.headers.get("set-uuid"))
    return web.json_response({"uuid": uuid})


async def task_new_upload(request: web.Request) -> web.Response:
    d, user = deps(request), user_of(request)
    uuid = request.match_info["uuid"]
    await d.intake.check_upload(user, uuid)  # before reading the body
    reader = form_reader(request)
    if reader is None:
        raise InvalidRequest("Need at least 1 file.")
    await d.intake.upload(user, uuid, ImageParts(reader))
    return web.json_response({"success": True})


async def task_new_commit(request: web.Request) -> web.Response:
    d, user = deps(request), user_of(request)
    uuid = await d.intake.commit(user, request.match_info["uuid"], cluster_url(request))
    return web.json_response({"uuid": uuid})


async def task_new(request: web.Request) -> web.Response:
    """Single-request form: fields, then files in ``images``."""
    d, user = deps(request), user_of(request)
    reader = form_reader(request)
    fields: dict[str, str] = {}
    part: FormPart | None = None
    if reader is not None:
        part = await reader.next()
        while part is not None and part.filename is None:
            if part.name:
                fields[part.name] = await reader.text(part.name)
            part = await reader.next()
    else:  # fields only, answered as a multipart body without files
        fields = await fields_without_files(request)
    if "zipurl" in fields:
        raise InvalidRequest("zipurl is not supported by this cluster; upload the images.")
    if reader is None or part is None:
        raise InvalidRequest("Need at least 1 file or a zip file url.")
    uuid = await d.intake.init(user, fields, request.headers.get("set-uuid"))
    try:
        late: dict[str, str] = {}
        await d.intake.upload(user, uuid, ImageParts(reader, part, late))
        if late:
            await d.intake.amend(user, uuid, late)
        await d.intake.commit(user, uuid, cluster_url(request))
    except BaseException:
        await d.intake.abandon(uuid)
        raise
    return web.json_response({"uuid": uuid})


async def locate(
    request: web.Request, uuid: str, action: str
) -> tuple[Node | None, TaskEntry | None]:
    return await deps(request).actions.locate(uuid, user_of(request), action)


def _passed_query(request: web.Request, route: str) -> dict[str, str]:
    """The client's query parameters that ``route`` passes on to the node; others stay here."""
    allowed = QUERY_ALLOWED[route]
    return {k: v for k, v in request.query.items() if k in allowed}


def _int_query(request: web.Request, key: str) -> int | None:
    if key not in request.query:
        return None
    return parse_line(request.query.get(key))


STATUS_CODE_RE = re.compile(rb'"status":\s*\{\s*"code":\s*(\d{1,3})\b')
"""The status code in a NodeODM ``/task/<uuid>/info`` answer, found without parsing it (the
status comes before the output lines; a quote inside a string is escaped, so never matches)."""


def answered_status(answer: web.StreamResponse) -> int | None:
    """The task status code in a relayed ``info`` answer held whole, if it has one."""
    body = answer.body if isinstance(answer, web.Response) else None
    if answer.status != 200 or not isinstance(body, bytes):
        return None
    return status_code_in(body)


def status_code_in(body: bytes) -> int | None:
    """The task status code in the body of a node's 200 ``info`` answer, if it has one."""
    match = STATUS_CODE_RE.search(body)
    return int(match.group(1)) if match else None


async def _ask_node(
    request: web.Request,
    node: Node,
    action: str,
    path: NodePath,
    uuid: str,
    query: dict[str, str],
) -> web.StreamResponse:
    """Forward to the owning node, within the poll limit (``Timeouts.poll_s``). While it is
    down or does not answer in time, the poll gets the task's last known state, marked as such
    (``tasks/lastknown.py``), until failover moves it.

    A status in an ``info`` answer counts at once in the node's queue count (a task seen
    finished frees its slot, ``NodeRegistry.task_seen``)."""
    d = deps(request)
    held = d.table.get(uuid)
    if held is not None and not d.registry.is_online(node):
        return _last_known(request, node, action, uuid, held)
    try:
        asked_ms = d.registry.now_ms()
        answer = await forward_poll(request, d.client, node, path, query)
        if path.endswith("/info"):
            d.registry.task_seen(node.key, uuid, answered_status(answer), asked_ms)
    except NodeUnreachable as e:
        d.registry.record_failure(node.key)
        # a refusing node is gone: without kept images (failover) the client must learn it
        if held is None and (uuid not in d.last_known or refused(e)):
            raise
        return _last_known(request, node, action, uuid, held)
    if (
        action == "info"
        and answer.status == 200
        and isinstance(answer, web.Response)
        and isinstance(answer.body, bytes)
        and "Content-Encoding" not in answer.headers
    ):
        d.last_known.note(uuid, answer.body)
    return answer


def _last_known(
    request: web.Request, node: Node, action: str, uuid: str, held: TaskEntry | None
) -> web.Response:
    with_output = _int_query(request, "with_output") if action == "info" else 0
    info = deps(request).last_known.info(uuid, node.key, held, with_output)
    if info is None:
        raise NodeUnreachable(f"Node {node.key} did not answer in time", node.key)
    return web.json_response(info if action == "info" else info.get("output", []))


async def _node_answer_or_entry(
    request: web.Request, action: str
) -> web.StreamResponse | TaskEntry:
    """The owning node's answer to ``/task/<uuid>/<action>``, or the entry the proxy holds.
    The node is asked about the very uuid whose owner ``locate`` checked."""
    uuid = request.match_info["uuid"]
    node, task = await locate(request, uuid, action)
    if node is not None:
        path = _node_path(lambda: paths.task(uuid, action))
        query = _passed_query(request, action)
        return await _ask_node(request, node, action, path, uuid, query)
    assert task is not None
    return task


async def task_info(request: web.Request) -> web.StreamResponse:
    answer = await _node_answer_or_entry(request, "info")
    if not isinstance(answer, TaskEntry):
        return answer
    with_output = _int_query(request, "with_output")
    return web.json_response(answer.info_json(int(time.time() * 1000), with_output))


async def task_output(request: web.Request) -> web.StreamResponse:
    answer = await _node_answer_or_entry(request, "output")
    if not isinstance(answer, TaskEntry):
        return answer
    line = parse_line(request.query.get("line"))
    return web.json_response(answer.info_json(0, line)["output"])


def _node_path(build: Callable[[], NodePath]) -> NodePath:
    """A node path from the request's parts; a part that cannot be one is the client's error."""
    try:
        return build()
    except paths.BadNodePath:
        raise InvalidRequest("Invalid route") from None


async def task_download(request: web.Request) -> web.StreamResponse:
    """``all.zip`` (from the node, or S3), or ``orthophoto.tif`` from S3; any other name is
    answered as NodeODM does (``Invalid asset``) without a node being asked."""
    d = deps(request)
    uuid, asset = request.match_info["uuid"], request.match_info["asset"]
    node, _ = await locate(request, uuid, "download")
    if asset not in paths.ASSETS:
        raise InvalidRequest("Invalid asset")
    links = getattr(d.dispatcher.provisioner, "downloads", None)
    if isinstance(links, S3Downloads):  # the autoscaler's bucket; presigned if private
        raise web.HTTPFound(links.url(uuid, asset))
    if d.settings.downloads_from_s3:
        raise web.HTTPFound(s3_asset_url(d.settings.downloads_from_s3, uuid, asset))
    if node is not None:
        if asset not in paths.NODE_ASSETS:
            raise InvalidRequest("Invalid asset")
        path = _node_path(lambda: paths.download(uuid, asset))
        query = _passed_query(request, "download")
        started = time.monotonic()
        resp = await forward(request, d.client, node, path, query=query)
        if resp.status == 200:
            # streamed answers may bypass the response's own byte count: the length it declared
            size = resp.body_length or resp.content_length or 0
            d.events.downloaded(uuid, asset, size, time.monotonic() - started)
        return resp
    if asset != "all.zip":
        raise InvalidRequest("Invalid asset")
    raise InvalidRequest("Asset not ready")


async def task_list(request: web.Request) -> web.Response:
    uuids = await deps(request).actions.list_uuids(user_of(request))
    return web.json_response([{"uuid": u} for u in uuids])


async def _form_fields(request: web.Request) -> dict[str, Any]:
    """cancel/remove/restart bodies: urlencoded, multipart or JSON, as NodeODM reads them."""
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.read() or b"{}")
        except (ValueError, RecursionError):  # not JSON, numbers past 4,300 digits, too deep
            raise InvalidRequest("Invalid JSON body") from None
        return body if isinstance(body, dict) else {}
    try:
        form = await request.post()
    except (ValueError, AssertionError) as e:
        raise InvalidRequest(f"Malformed body: {e}") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def task_action(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    body = await _form_fields(request)
    uuid = body.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise InvalidRequest("uuid param missing.")
    answer = await deps(request).actions.act(action, uuid, user_of(request), body.get("options"))
    return web.json_response(answer)
