"""The users provider (``--users users.toml``): named tokens, each with its own limits.

Between the original's one shared ``--token`` and its external lightning service: a lab can
give five people five tokens and five quotas with a file. The file is re-read when it changes;
a bad file on reload keeps the users already loaded and logs what is wrong.

Tokens are kept only as SHA-256 digests. A lookup hashes the presented token and finds its
digest in a dict, then confirms with ``hmac.compare_digest``. The dict lookup's timing depends
on the digest of what the caller sent, which they know anyway; learning how many leading bytes
of a stored digest their guess matched does not help to find a token with that digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterodm.access.base import Limits, User
from clusterodm.compat import tomllib
from clusterodm.config import ConfigError
from clusterodm.errors import AuthError
from clusterodm.tasks.limits import parse_rules

log = logging.getLogger(__name__)

USER_KEYS = frozenset(
    {"name", "token", "token_sha256", "max_images", "max_concurrent_tasks", "options"}
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class UserEntry:
    name: str
    digest: bytes
    limits: Limits


def _count(where: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: {key} must be a whole number >= 0, not {value!r}")
    return value


def _entry(index: int, raw: Any) -> UserEntry:
    where = f"user #{index + 1}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: name is missing")
    where = f"user {name!r}"
    unknown = set(raw) - USER_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    plain, hashed = raw.get("token"), raw.get("token_sha256")
    if (plain is None) == (hashed is None):
        raise ValueError(f"{where}: give exactly one of token or token_sha256")
    if plain is not None:
        if not isinstance(plain, str) or not plain:
            raise ValueError(f"{where}: token must be a non-empty string")
        digest = token_digest(plain)
    else:
        if not isinstance(hashed, str) or not _HEX64.match(hashed.lower()):
            raise ValueError(f"{where}: token_sha256 must be 64 hex digits")
        digest = bytes.fromhex(hashed)
    options = raw.get("options") or {}
    try:
        parse_rules(options)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    limits = Limits(
        max_images=_count(where, "max_images", raw.get("max_images")),
        max_concurrent_tasks=_count(where, "max_concurrent_tasks", raw.get("max_concurrent_tasks")),
        options={str(k): dict(v) for k, v in options.items()},
    )
    return UserEntry(name.strip(), digest, limits)


def parse_users(text: str) -> dict[bytes, UserEntry]:
    """Users by token digest; ValueError saying what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"not valid TOML: {e}") from None
    unknown = set(data) - {"user"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (users are [[user]] tables)")
    raw_users = data.get("user")
    if not isinstance(raw_users, list) or not raw_users:
        raise ValueError("no [[user]] entries")
    users: dict[bytes, UserEntry] = {}
    names: set[str] = set()
    for i, raw in enumerate(raw_users):
        entry = _entry(i, raw)
        if entry.name in names:
            raise ValueError(f"user {entry.name!r} appears twice")
        if entry.digest in users:
            other = users[entry.digest].name
            raise ValueError(f"user {entry.name!r} has the same token as {other!r}")
        names.add(entry.name)
        users[entry.digest] = entry
    return users


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class UsersAccess:
    per_user = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._users: dict[bytes, UserEntry] = {}
        self._signature: tuple[int, int, int] | None = None
        self.load()

    def load(self) -> None:
        """First load; a bad file is a ConfigError naming the key."""
        try:
            signature = _signature(self.path)
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--users: cannot read {self.path}: {e.strerror}") from None
        try:
            self._users = parse_users(text)
        except ValueError as e:
            raise ConfigError(f"--users: {self.path}: {e}") from None
        self._signature = signature
        log.info("users file %s: %d users", self.path, len(self._users))

    async def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True if new users were taken."""
        try:
            signature = await asyncio.to_thread(_signature, self.path)
            if signature == self._signature:
                return False
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except OSError as e:
            log.error("users file %s: cannot read (%s); keeping the users loaded", self.path, e)
            return False
        self._signature = signature
        try:
            users = parse_users(text)
        except ValueError as e:
            log.error("users file %s: %s; keeping the users loaded", self.path, e)
            return False
        self._users = users
        log.info("users file %s reloaded: %d users", self.path, len(users))
        return True

    async def watch(self, interval_s: float) -> None:
        """Background loop: reload when the file changes."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload_if_changed()
            except Exception:
                log.exception("users file reload failed")

    @property
    def names(self) -> list[str]:
        return sorted(u.name for u in self._users.values())

    async def authenticate(self, token: str) -> User:
        if not token:
            raise AuthError("Missing authentication token.")
        digest = token_digest(token)
        entry = self._users.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            raise AuthError("Invalid authentication token.")
        return User(token=token, owner=entry.name, name=entry.name, limits=entry.limits)

    async def approve_task(self, user: User, images: int) -> None:
        return None  # image and task limits are checked by the intake

    async def task_finished(self, user: User, uuid: str) -> None:
        return None

    def auth_info(self) -> dict[str, Any]:
        return {
            "message": "Authentication not available on this node",
            "loginUrl": None,
            "registerUrl": None,
        }
