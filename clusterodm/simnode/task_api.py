"""Task routes of the NodeODM API: create (chunked or single request), query, act, download."""

from __future__ import annotations

import asyncio
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .app import _HANG_POLL_S, ApiError, NodeContext, ctx, error_response, json_response
from .download import send_zip
from .jsvalues import JsonError, parse_int, parse_json, slice_start
from .options import validate_options
from .staging import read_form
from .tasks import CannotRestart, Task, TaskNotFound, iso_now, now_ms

_SET_UUID = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-7][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE
)
_NOT_FOUND = "Invalid uuid (not found)"


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """The init fields of a task, checked."""

    name: str | None
    options: list[dict[str, Any]]
    skip_post_processing: bool
    webhook: str | None
    outputs: list[str] | None
    date_created: int


def _settings(fields: dict[str, Any], context: NodeContext) -> TaskSettings:
    """Check init fields as NodeODM does (options validated, raising their error text)."""
    name = fields.get("name")
    if name == "":
        name = f"Task of {iso_now()}"
    outputs = None
    if fields.get("outputs"):
        try:
            parsed = parse_json(fields["outputs"])
        except JsonError:
            parsed = None  # NodeODM falls back to the default contents
        if isinstance(parsed, list):
            outputs = [str(path) for path in parsed]
    created = parse_int(fields.get("dateCreated"))
    return TaskSettings(
        name=name,
        options=validate_options(fields.get("options"), context.config.max_concurrency),
        skip_post_processing=fields.get("skipPostProcessing") == "true",
        webhook=fields.get("webhook") or None,
        outputs=outputs,
        date_created=created if isinstance(created, int) else now_ms(),
    )


def _new_uuid(request: web.Request, context: NodeContext) -> str:
    wanted = request.headers.get("set-uuid")
    if wanted is None:
        return str(uuidlib.uuid4())
    if not _SET_UUID.match(wanted) or wanted in context.tasks.tasks:
        raise ApiError(f"Invalid set-uuid: {wanted}")
    return wanted


def _create(context: NodeContext, uuid: str, settings: TaskSettings, zipurl: str | None) -> None:
    staged = context.staging.path(uuid)
    task = Task(
        uuid=uuid,
        name=settings.name,
        date_created=settings.date_created,
        options=settings.options,
        images=context.staging.files(uuid),
        directory=context.root / "data" / uuid,
        webhook=settings.webhook,
        skip_post_processing=settings.skip_post_processing,
        outputs=settings.outputs,
    )
    context.tasks.add(task, staged, zipurl)


async def init(request: web.Request) -> web.Response:
    context = ctx(request)
    uuid = _new_uuid(request, context)
    fields, _ = await read_form(request)
    try:
        _settings(fields, context)
    except Exception:
        context.staging.discard(uuid)
        raise
    context.staging.begin(uuid, fields)
    return json_response({"uuid": uuid})


async def upload(request: web.Request) -> web.Response:
    context = ctx(request)
    uuid = request.match_info["uuid"]
    context.upload_requests += 1
    if not context.staging.is_staged(uuid):
        raise ApiError(_NOT_FOUND)
    config = context.config
    dropped = config.test_drop_uploads and context.upload_requests % 2 == 0
    exhausted = (
        config.drop_uploads_after is not None and context.good_uploads >= config.drop_uploads_after
    )
    if dropped or exhausted:
        return web.Response(status=500, text="Internal Server Error")
    _, files = await read_form(request, context.staging.path(uuid))
    if not files:
        raise ApiError("Need at least 1 file.", noRetry=True)
    context.good_uploads += 1
    # fault knob: the images are kept, the answer is late (a sender that gave up resends them)
    while config.hang_uploads and not context.stopping.is_set():  # noqa: ASYNC110
        await asyncio.sleep(_HANG_POLL_S)
    return json_response({"success": True})


async def commit(request: web.Request) -> web.Response:
    context = ctx(request)
    uuid = request.match_info["uuid"]
    staging = context.staging
    if not staging.is_staged(uuid) or uuid in context.tasks.tasks:
        raise ApiError(_NOT_FOUND)
    fields = staging.read_body(uuid)
    (staging.path(uuid) / "body.json").unlink()
    if not staging.files(uuid):
        staging.discard(uuid)
        raise ApiError("Need at least 1 file.")
    _create(context, uuid, _settings(fields, context), None)
    return json_response({"uuid": uuid})


async def new(request: web.Request) -> web.Response:
    """Single-request creation: fields plus files, or a ``zipurl`` the node downloads."""
    context = ctx(request)
    uuid = _new_uuid(request, context)
    staging = context.staging
    folder = staging.path(uuid)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fields, files = await read_form(request, folder)
        settings = _settings(fields, context)
        zipurl = fields.get("zipurl") or None
        if not files and zipurl is None:
            raise ApiError("Need at least 1 file or a zip file url.")
        limit = context.config.max_images
        if limit is not None and len(files) > limit:
            raise ApiError(
                f"{len(files)} images uploaded, but this node can only process up to {limit}."
            )
    except BaseException:
        staging.discard(uuid)
        raise
    _create(context, uuid, settings, zipurl)
    return json_response({"uuid": uuid})


async def task_list(request: web.Request) -> web.Response:
    return json_response([{"uuid": uuid} for uuid in ctx(request).tasks.tasks])


async def task_info(request: web.Request) -> web.Response:
    task = ctx(request).tasks.get(request.match_info["uuid"])
    raw = request.query.get("with_output")
    return json_response(task.info(None if raw is None else slice_start(raw)))


async def task_output(request: web.Request) -> web.Response:
    task = ctx(request).tasks.get(request.match_info["uuid"])
    return json_response(task.output[slice_start(request.query.get("line")) :])


async def download(request: web.Request) -> web.StreamResponse:
    task = ctx(request).tasks.get(request.match_info["uuid"])
    if request.match_info["asset"] != "all.zip":
        raise ApiError("Invalid asset")
    if task.zip is None:
        raise ApiError("Asset not ready")
    return await send_zip(request, task.zip)


async def _params(request: web.Request) -> dict[str, Any]:
    """Body of cancel/remove/restart: JSON, urlencoded or multipart."""
    if request.content_type == "application/json":
        body = parse_json(await request.text())
        return body if isinstance(body, dict) else {}
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return dict(await request.post())
    return {}


async def _target(request: web.Request) -> tuple[NodeContext, dict[str, Any], str]:
    params = await _params(request)
    uuid = params.get("uuid")
    if not uuid or not isinstance(uuid, str):
        raise ApiError("uuid param missing.")
    return ctx(request), params, uuid


def _failure(error: Exception) -> web.Response:
    return json_response({"success": False, "error": str(error).strip("'\"")})


async def cancel(request: web.Request) -> web.Response:
    context, _, uuid = await _target(request)
    try:
        context.tasks.cancel(uuid)
    except TaskNotFound as error:
        return _failure(error)
    return json_response({"success": True})


async def remove(request: web.Request) -> web.Response:
    context, _, uuid = await _target(request)
    try:
        await context.tasks.remove(uuid)
    except TaskNotFound as error:
        return _failure(error)
    return json_response({"success": True})


async def restart(request: web.Request) -> web.Response:
    context, params, uuid = await _target(request)
    options = None
    if params.get("options") is not None:
        try:
            options = validate_options(params["options"], context.config.max_concurrency)
        except ValueError as error:
            return error_response(str(error))
    try:
        context.tasks.restart(uuid, options)
    except (TaskNotFound, CannotRestart) as error:
        return _failure(error)
    return json_response({"success": True})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/task/new/init", init)
    router.add_post("/task/new/upload/{uuid}", upload)
    router.add_post("/task/new/commit/{uuid}", commit)
    router.add_post("/task/new", new)
    router.add_get("/task/list", task_list)
    router.add_get("/task/{uuid}/info", task_info)
    router.add_get("/task/{uuid}/output", task_output)
    router.add_get("/task/{uuid}/download/{asset}", download)
    router.add_post("/task/cancel", cancel)
    router.add_post("/task/remove", remove)
    router.add_post("/task/restart", restart)
