"""``zipurl`` of ``POST /task/new``: download a zip of images and extract it, flattened."""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path

import aiohttp

_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
_CHUNK_BYTES = 256 * 1024


class ZipUrlError(RuntimeError):
    """The zip could not be fetched or extracted; ``str()`` becomes the task's errorMessage."""


async def fetch_images_zip(url: str, folder: Path) -> None:
    """Download ``url`` into ``folder`` and extract its files there without their folders."""
    target = folder / "_zipurl_download.zip"
    try:
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT) as session,
            session.get(url) as response,
        ):
            with target.open("wb") as out:
                async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                    out.write(chunk)
    except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, ValueError, OSError) as error:
        target.unlink(missing_ok=True)
        raise ZipUrlError(f"Could not download {url}: {error}") from None
    try:
        await asyncio.to_thread(_extract_flat, target, folder)
    except (zipfile.BadZipFile, OSError):
        raise ZipUrlError("Could not extract .zip file, unzip exited with code 9") from None
    finally:
        target.unlink(missing_ok=True)


def _extract_flat(archive: Path, folder: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        for entry in zipped.infolist():
            name = entry.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if entry.is_dir() or not name or name.startswith("."):
                continue
            with zipped.open(entry) as source, (folder / name).open("wb") as out:
                while chunk := source.read(_CHUNK_BYTES):
                    out.write(chunk)
