"""``nodes/paths.py``: what can become a path sent to a node, and what the web UI rule admits."""

from __future__ import annotations

import os
import re
import uuid as uuidlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterodm.nodes import paths
from clusterodm.proxy.middleware import is_public, path_problem

PUBLIC_DIR = Path(os.environ.get("NODEODM_SH", "/nonexistent")).parent / "nodeodm" / "public"
UUID = "0e3c9a7e-5d21-4b84-8c1f-2e3d4c5b6a70"
FUZZ = settings(max_examples=400, deadline=None, derandomize=True)


def test_every_file_of_nodeodms_web_ui_is_public() -> None:
    if not PUBLIC_DIR.is_dir():
        pytest.skip("NodeODM's sources are not beside the checkout (NODEODM_SH)")
    files = ["/" + p.relative_to(PUBLIC_DIR).as_posix() for p in PUBLIC_DIR.rglob("*")]
    files = [f for f in files if (PUBLIC_DIR / f[1:]).is_file()]
    assert len(files) > 40
    for f in files:
        assert paths.is_ui_file(f) and is_public(f) and path_problem(f) is None, f


@pytest.mark.parametrize(
    "path",
    [
        "/task/list",
        "/info",
        "/task/list.js",
        "/info.js",
        f"/task/{UUID}/info.js",
        "/js/../task/list.js",
        "/js/..",
        "/js/.hidden.js",
        "/css/a.css/..",
        "/x.png",
        "/favicon.ico",
        "/js/main.js/",
        "/js//main.js",
        "/fonts/a.exe",
    ],
)
def test_api_routes_and_odd_paths_are_not_ui_files(path: str) -> None:
    assert not paths.is_ui_file(path)


segments = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x17F), max_size=12)


@FUZZ
@given(uuid=segments | st.uuids().map(str), part=segments)
def test_node_paths_are_their_templates_or_nothing(uuid: str, part: str) -> None:
    """Whatever the parts, a built path is exactly a template with a checked uuid."""
    template = re.compile(
        r"/task/(?:new/(?:upload|commit)/)?[0-9a-fA-F-]{36}(?:/(?:info|output|download/all\.zip))?"
    )
    builders = [
        lambda: paths.task(uuid, "info"),
        lambda: paths.task(uuid, part),
        lambda: paths.download(uuid, part),
        lambda: paths.download(uuid, "all.zip"),
        lambda: paths.upload(uuid),
        lambda: paths.commit(uuid),
    ]
    for build in builders:
        try:
            built = build()
        except paths.BadNodePath:
            continue
        assert template.fullmatch(built), built
        assert str(uuidlib.UUID(uuid)) == uuid.lower()


@FUZZ
@given(path=st.lists(segments, min_size=1, max_size=5).map("/".join).map(lambda p: "/" + p))
def test_a_public_path_is_plain_as_sent(path: str) -> None:
    """Public implies no escape, no dot segment, no separator but ``/``: nothing that a node
    would read as another path."""
    if is_public(path):
        assert path_problem(path) is None
        assert "%" not in path and "\\" not in path and "?" not in path and ";" not in path
        assert not any(s in (".", "..") for s in path.split("/"))
