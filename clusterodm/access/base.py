"""AccessProvider protocol: token check, per-user limits, task approval, /auth answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Limits:
    """What one user may do. None = no limit."""

    max_images: int | None = None
    max_concurrent_tasks: int | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class User:
    """Who is calling. ``owner`` tags the routes they create ('' = shared by all tokens)."""

    token: str
    owner: str = ""
    name: str = ""
    limits: Limits = NO_LIMITS


class AccessProvider(Protocol):
    #: routes are private to their owner (per-user tokens); False = one shared token
    per_user: bool

    async def authenticate(self, token: str) -> User:
        """The user behind ``token``; raises AuthError."""

    async def approve_task(self, user: User, images: int) -> None:
        """Raise LimitExceeded if the user may not start a task of ``images`` images."""

    async def task_finished(self, user: User, uuid: str) -> None: ...

    def auth_info(self) -> dict[str, Any]: ...
