"""The README as a user meets it: its flag table is what ``--help`` prints, ``--version``
answers, and its first command installs and starts the cluster in a fresh venv made from the
system Python (as on Debian 12 / Ubuntu 22.04 / 24.04, where a bare ``pip install`` is refused).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clusterodm import __version__
from clusterodm.cli import build_parser
from tests.packaging import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
SYSTEM_PYTHON = Path("/usr/bin/python3")
INSTALL_TIMEOUT_S = 420


def table_flags() -> set[str]:
    """Every ``--flag`` (and ``-x``) named in the first column of the README's flag table."""
    section = README.split("## Flags", 1)[1].split("\n## ", 1)[0]
    flags: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            flags.update(re.findall(r"`(-{1,2}[a-z][a-z0-9-]*)`?", first))
            flags.update(re.findall(r"(?<![\w-])(-{1,2}[a-z][a-z0-9-]*)", first))
    return flags


def help_flags() -> set[str]:
    flags: set[str] = set()
    for action in build_parser()._actions:
        flags.update(action.option_strings)
    return flags - {"-h", "--help"}


def test_flag_table_is_what_help_prints() -> None:
    in_table, in_help = table_flags(), help_flags()
    assert in_help - in_table == set(), "flags missing from the README table"
    assert in_table - in_help == set(), "README names flags --help does not know"
    text = subprocess.run(
        [sys.executable, "-m", "clusterodm", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag in in_table:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag


def test_version_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clusterodm", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == f"ClusterODM {__version__}"


def first_command() -> str:
    quick = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.+?)\n```", quick, re.S)
    assert block is not None
    return block.group(1).strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 90)
def test_readme_first_command_in_a_fresh_venv_of_the_system_python(tmp_path: Path) -> None:
    command = first_command()
    assert command.startswith("python3 -m venv .venv && ") and command.endswith(
        ".venv/bin/clusterodm"
    ), "the quick start makes its own venv"
    if (
        not SYSTEM_PYTHON.exists()
        or subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import ensurepip, venv"], capture_output=True, timeout=30
        ).returncode
    ):
        message = f"{SYSTEM_PYTHON} with venv not found (apt-get install python3-venv)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "data", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
        ),
    )
    # the system Python first on PATH: `python3` in the command is the distribution's
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{SYSTEM_PYTHON.parent}:{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    install, _, start = command.rpartition(" && ")
    done = subprocess.run(
        ["bash", "-c", install],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    version = subprocess.run(
        [start, "--version"], cwd=src, env=env, capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip() == f"ClusterODM {__version__}"
    port = _free_port()
    flags = ["--bind", "127.0.0.1", "--port", str(port), "--admin-cli-port", "0"]
    flags += ["--admin-web-port", "0", "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(
        [str(src / start), *flags], cwd=src, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=2) as r:
                    body = r.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert b'"version"' in body, "the installed cluster answers /info"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
