"""The ``local`` provider: one optional shared token, no limits."""

from __future__ import annotations

import hmac
from typing import Any

from clusterodm.access.base import User
from clusterodm.errors import AuthError


class LocalAccess:
    per_user = False

    def __init__(self, token: str = "") -> None:
        self._token = token.encode()

    async def authenticate(self, token: str) -> User:
        if self._token and not hmac.compare_digest(token.encode(), self._token):
            raise AuthError("Invalid authentication token: token does not match.")
        return User(token=token)

    async def approve_task(self, user: User, images: int) -> None:
        return None

    async def task_finished(self, user: User, uuid: str) -> None:
        return None

    def auth_info(self) -> dict[str, Any]:
        return {
            "message": "Authentication not available on this node",
            "loginUrl": None,
            "registerUrl": None,
        }
