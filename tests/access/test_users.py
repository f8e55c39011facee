"""The users provider: file schema, hashed tokens, reload that keeps the old users on error."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from clusterodm.access.users import UsersAccess, parse_users
from clusterodm.config import ConfigError
from clusterodm.errors import AuthError
from tests.helpers import write_atomically as write

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def users_toml(bob_images: int = 5) -> str:
    return f"""
[[user]]
name = "alice"
token_sha256 = "{sha(ALICE)}"
max_images = 500
max_concurrent_tasks = 2
[user.options]
"feature-quality" = {{ domain = ["medium", "low"] }}

[[user]]
name = "bob"
token = "{BOB}"
max_images = {bob_images}
"""


async def test_tokens_map_to_named_users_with_limits(tmp_path: Path) -> None:
    f = tmp_path / "users.toml"
    write(f, users_toml())
    access = UsersAccess(f)
    alice = await access.authenticate(ALICE)
    assert (alice.owner, alice.limits.max_images, alice.limits.max_concurrent_tasks) == (
        "alice",
        500,
        2,
    )
    assert alice.limits.options == {"feature-quality": {"domain": ["medium", "low"]}}
    bob = await access.authenticate(BOB)
    assert (bob.owner, bob.limits.max_images, bob.limits.max_concurrent_tasks) == ("bob", 5, None)
    for wrong in ("", "alice", ALICE + "x", sha(ALICE)):
        with pytest.raises(AuthError):
            await access.authenticate(wrong)
    assert access.per_user


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("user = 3", "no \\[\\[user\\]\\] entries"),
        ("[[user]]\nname='a'\n", "exactly one of token or token_sha256"),
        ("[[user]]\nname='a'\ntoken='x'\ntoken_sha256='ab'\n", "exactly one"),
        ("[[user]]\nname='a'\ntoken_sha256='xyz'\n", "64 hex digits"),
        ("[[user]]\nname='a'\ntoken='x'\nmax_images=-1\n", "max_images"),
        ("[[user]]\nname='a'\ntoken='x'\ncolour='red'\n", "unknown key 'colour'"),
        ("[[user]]\nname='a'\ntoken='x'\n[[user]]\nname='a'\ntoken='y'\n", "appears twice"),
        ("[[user]]\nname='a'\ntoken='x'\n[[user]]\nname='b'\ntoken='x'\n", "same token"),
        ("[[user]]\nname='a'\ntoken='x'\n[user.options]\nsplit={remove='yes'}\n", "true or false"),
        ("[[user\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_users(text)


def test_bad_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "users.toml"
    write(f, "[[user]]\nname='a'\n")
    with pytest.raises(ConfigError, match=r"--users: .*users\.toml: user 'a'"):
        UsersAccess(f)
    with pytest.raises(ConfigError, match="cannot read"):
        UsersAccess(tmp_path / "missing.toml")


async def test_reload_applies_changes_and_keeps_users_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "users.toml"
    write(f, users_toml(bob_images=5))
    access = UsersAccess(f)
    assert not await access.reload_if_changed(), "unchanged file is not re-read"
    write(f, users_toml(bob_images=7))
    assert await access.reload_if_changed()
    assert (await access.authenticate(BOB)).limits.max_images == 7
    with caplog.at_level(logging.ERROR):
        write(f, "[[user]]\nname = 'bob'\n")
        assert not await access.reload_if_changed()
    assert "exactly one of token or token_sha256" in caplog.text
    assert (await access.authenticate(BOB)).limits.max_images == 7
    f.unlink()
    assert not await access.reload_if_changed()
    assert access.names == ["alice", "bob"]
