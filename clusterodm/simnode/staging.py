"""Upload staging on disk: ``tmp/<uuid>/`` with ``body.json`` and the uploaded files.

Files are streamed from the multipart reader to disk chunk by chunk (never whole in memory).
Names follow NodeODM: the client's base name, ``_`` before the extension on a clash, and
``body.json`` saved as ``_body.json``. Unlike NodeODM, a name is reserved atomically (exclusive
create), so parallel uploads of the same name never overwrite each other.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

_CHUNK_BYTES = 256 * 1024
_MAX_FIELD_BYTES = 4 * 1024 * 1024
BODY_FILE = "body.json"


class FormError(ValueError):
    """The request body was refused; ``str()`` is the error text to answer."""


class Staging:
    """Staged uploads under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, uuid: str) -> Path:
        return self.root / uuid

    def is_staged(self, uuid: str) -> bool:
        """Initialised and not yet committed: ``body.json`` is there."""
        return (self.path(uuid) / BODY_FILE).is_file()

    def begin(self, uuid: str, body: dict[str, Any]) -> Path:
        """Create (or reuse) the staging folder and (over)write its ``body.json``."""
        folder = self.path(uuid)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / BODY_FILE).write_text(json.dumps(body), encoding="utf-8")
        return folder

    def read_body(self, uuid: str) -> dict[str, Any]:
        try:
            body = json.loads((self.path(uuid) / BODY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise FormError("Malformed body.json") from None
        if not isinstance(body, dict):
            raise FormError("Malformed body.json")
        return body

    def files(self, uuid: str) -> list[str]:
        return sorted(n for n in os.listdir(self.path(uuid)) if n != BODY_FILE)

    def discard(self, uuid: str) -> None:
        shutil.rmtree(self.path(uuid), ignore_errors=True)


def _claim_name(folder: Path, filename: str) -> Path:
    """Reserve a free name for ``filename`` in ``folder`` by creating it empty."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        name = "file"
    if name == BODY_FILE:
        name = f"_{BODY_FILE}"
    while True:
        try:
            (folder / name).open("xb").close()
            return folder / name
        except FileExistsError:
            pass
        stem, dot, ext = name.rpartition(".")
        name = f"{stem}_.{ext}" if dot and stem else f"{name}_"


async def save_part(part: BodyPartReader, folder: Path) -> str:
    """Stream one file part to ``folder``; return the stored name (nothing left on failure)."""
    target = _claim_name(folder, part.filename or "")
    try:
        with target.open("wb") as out:
            while chunk := await part.read_chunk(_CHUNK_BYTES):
                out.write(chunk)  # small writes: the page cache absorbs them without stalling
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target.name


async def _read_field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK_BYTES):
        data += chunk
        if len(data) > _MAX_FIELD_BYTES:
            raise FormError("Field value too long")
    return data.decode(part.get_charset(default="utf-8"), errors="replace")


async def read_form(
    request: web.Request, files_dir: Path | None = None
) -> tuple[dict[str, str], list[str]]:
    """Text fields and stored file names of a multipart body; non-multipart bodies are empty.

    Files are accepted only in the ``images`` field and only when ``files_dir`` is given, else
    ``Unexpected field``, as multer answers. On any error the files of this request are removed.
    """
    fields: dict[str, str] = {}
    files: list[str] = []
    if not request.content_type.startswith("multipart/"):
        return fields, files
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, MultipartReader):
                raise FormError("Unexpected field")
            if part.filename is not None:
                if files_dir is None or part.name != "images":
                    raise FormError("Unexpected field")
                files.append(await save_part(part, files_dir))
            elif part.name:
                fields.setdefault(part.name, await _read_field(part))
    except BaseException as error:
        if files_dir is not None:
            for name in files:
                (files_dir / name).unlink(missing_ok=True)
        if isinstance(error, ValueError | AssertionError) and not isinstance(error, FormError):
            raise FormError(f"Malformed multipart body: {error}") from None
        raise
    return fields, files
