"""Bad start-up input: one line naming the flag or file, a non-zero exit, no traceback.

Each case runs ``python -m clusterodm`` as a real process, as an operator would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import free_port


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def start(*flags: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "clusterodm", "--bind=127.0.0.1"]
    defaults = {"--port": "0", "--admin-cli-port": "0", "--admin-web-port": "0"}
    given = {f.split("=", 1)[0] for f in flags}
    args += [f"{k}={v}" for k, v in defaults.items() if k not in given]
    return subprocess.run([*args, *flags], capture_output=True, text=True, timeout=60)


def one_error_line(run: subprocess.CompletedProcess[str], *words: str) -> str:
    assert run.returncode != 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("clusterodm:")]
    assert len(errors) == 1, run.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("flag", ["--port", "--admin-cli-port", "--admin-web-port"])
def test_port_in_use(tmp_path: Path, busy_port: int, flag: str) -> None:
    run = start(f"{flag}={busy_port}", f"--data-dir={tmp_path / 'd'}")
    one_error_line(run, f"{flag} {busy_port}", "address already in use")


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    one_error_line(start(f"--data-dir={tmp_path / 'f'}"), "--data-dir", "not a folder")


def test_data_dir_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    one_error_line(start(f"--data-dir={tmp_path / 'f' / 'sub'}"), "--data-dir", "cannot create")


def test_data_dir_not_writable(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root may write anywhere: /proc takes no files at all
            folder = Path("/proc")
        one_error_line(start(f"--data-dir={folder}"), f"--data-dir {folder}", "cannot write")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_redis_down(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    one_error_line(start(f"--data-dir={tmp_path / 'd'}", f"--store={url}"), f"--store {url}")


@pytest.mark.parametrize(
    ("flag", "word"), [("--port=abc", "--port"), ("--failover-grace=-1", "--failover-grace")]
)
def test_bad_flag(tmp_path: Path, flag: str, word: str) -> None:
    one_error_line(start(flag, f"--data-dir={tmp_path / 'd'}"), word)


def test_corrupt_nodes_json_stops_and_is_read_again_once_fixed(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    nodes = data / "nodes.json"
    nodes.write_text('[\n  {"hostname": "127.0.0.1", "port": "3001",\n')
    one_error_line(start(f"--data-dir={data}"), f"{nodes}:3:1", "not valid JSON")
    nodes.write_text('[{"hostname": "127.0.0.1", "port": "3001", "token": ""}]')
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "clusterodm", "--bind=127.0.0.1", "--port=0"),
            *("--admin-cli-port=0", "--admin-web-port=0", f"--data-dir={data}"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # bounded: the process ends or says it listens
            seen.append(line)
            if "listening on port" in line:
                break
        assert any("imported 1 nodes" in line for line in seen), "".join(seen)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
