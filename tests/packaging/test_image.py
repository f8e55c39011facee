"""The container image: built from ``Dockerfile`` with podman, run from its file system.

No registry can be pulled from and no container can be started on CI, but images can be built
(see ../shared/TESTING_HERE.md, section 4). So: a Debian base made with debootstrap stands in
for ``python:3.11-slim``, podman builds the Dockerfile on it, and the image's entry point runs
under ``chroot`` in the mounted image, as its non-root user, with a host folder mounted on the
image's volume (as ``docker run -v`` does). It shares the host network, so a simulated node and
pyodm on loopback drive a task through it. Needs root, podman and debootstrap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.packaging import (
    REPO,
    free_port,
    require,
    require_tools,
    run_task_through,
    start,
    start_simnode,
    wait_listening,
    write_nodes_json,
)

pytestmark = pytest.mark.timeout(600)

SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
VOLUME = "/var/lib/clusterodm"
STEP_TIMEOUT_S = 300


@dataclass(frozen=True, slots=True)
class Podman:
    """podman with a private containers.conf (no ulimits: setrlimit is refused here)."""

    env: dict[str, str]

    def __call__(self, *args: str, input_bytes: bytes | None = None) -> str:
        done = subprocess.run(
            ["podman", *args],
            env=self.env,
            input=input_bytes,
            capture_output=True,
            timeout=STEP_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout.decode(errors='replace')[-4000:]}\n"
                f"{done.stderr.decode(errors='replace')[-4000:]}"
            )
        return done.stdout.decode().strip()


@dataclass(frozen=True, slots=True)
class BuiltImage:
    podman: Podman
    tag: str
    config: dict[str, Any]
    healthcheck: dict[str, Any]


def make_base(podman: Podman, rootfs: Path, tag: str) -> None:
    """A Debian base with python3 and venv: what ``python:3.11-slim`` gives users."""
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs)],
        check=True,
        capture_output=True,
        timeout=STEP_TIMEOUT_S,
    )
    # pip inside the build reaches PyPI the way this machine does, which may be through a
    # TLS-inspecting proxy: the stand-in base trusts what the host trusts.
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.run(
        ["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True, timeout=120
    )
    podman("import", "-q", "-", tag, input_bytes=tar.stdout)


@pytest.fixture
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """Built once for the one test here (a shared fixture would be built once per xdist worker)."""
    require(os.geteuid() == 0, "needs root (debootstrap, chroot, mount)")
    require_tools("podman", "debootstrap", "chroot", "mount")
    tmp = tmp_path_factory.mktemp("image")
    conf = tmp / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    podman = Podman({**os.environ, "CONTAINERS_CONF": str(conf)})
    run_id = uuid.uuid4().hex[:10]
    base = f"localhost/clusterodm-test-base:{run_id}"
    tag = f"localhost/clusterodm-test:{run_id}"
    rootfs = tmp / "rootfs"
    try:
        t0 = time.monotonic()
        make_base(podman, rootfs, base)
        t1 = time.monotonic()
        # docker format: the OCI format has no HEALTHCHECK
        podman(
            *("build", "--isolation", "chroot", "--format", "docker", "--layers=false"),
            *("--build-arg", f"BASE={base}", "-t", tag, str(REPO)),
        )
        t2 = time.monotonic()
        print(f"base image {t1 - t0:.0f} s, image build {t2 - t1:.0f} s")
        inspected = json.loads(podman("image", "inspect", tag))[0]
        config = inspected["Config"]
        # podman shows it beside the config; docker inside it
        healthcheck = inspected.get("Healthcheck") or config.get("Healthcheck") or {}
        yield BuiltImage(podman, tag, config, healthcheck)
    finally:
        for name in (tag, base):
            try:
                podman("rmi", "-f", name)
            except AssertionError:
                pass
        shutil.rmtree(rootfs, ignore_errors=True)


def check_declarations(image: BuiltImage) -> None:
    """User, volume, ports, entry point and health check, as `podman image inspect` shows them."""
    config = image.config
    assert config["User"].split(":")[0] == "clusterodm"
    assert VOLUME in config["Volumes"]
    assert set(config["ExposedPorts"]) == {"3000/tcp", "8080/tcp", "10000/tcp"}
    assert config["Entrypoint"][0] == "/opt/clusterodm/bin/clusterodm"
    assert config["Entrypoint"][1:] == ["--data-dir", VOLUME]
    test = image.healthcheck.get("Test", [])
    assert test[:1] == ["CMD"] and test[-1].endswith("healthcheck.py"), image.healthcheck


def passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user} in the image")


def test_image_builds_and_runs_a_task_as_non_root(image: BuiltImage, tmp_path: Path) -> None:
    check_declarations(image)
    mount = Path(image.podman("image", "mount", image.tag))
    uid, gid = passwd_ids(mount, "clusterodm")
    assert uid != 0 and gid != 0
    volume = tmp_path / "volume"
    mounted: list[Path] = []
    node = cluster = None
    try:
        # the volume, as `docker run -v ...:/var/lib/clusterodm`; /proc for the health check
        volume.mkdir()
        os.chown(volume, uid, gid)
        subprocess.run(["mount", "--bind", str(volume), str(mount / VOLUME[1:])], check=True)
        mounted.append(mount / VOLUME[1:])
        subprocess.run(["mount", "-t", "proc", "proc", str(mount / "proc")], check=True)
        mounted.append(mount / "proc")

        node, node_port = start_simnode()
        write_nodes_json(volume, node_port)
        chroot = ["chroot", f"--userspec={uid}:{gid}", str(mount)]
        # flags after the image name are appended to the entry point, as `docker run` does;
        # a known port: the health check reads it from the command line
        flags = ["--port", str(free_port()), "--bind", "127.0.0.1", "--admin-cli-port", "0"]
        flags += ["--admin-web-port", "0"]
        cluster = start([*chroot, *image.config["Entrypoint"], *flags])
        port = wait_listening(cluster)
        status = Path(f"/proc/{cluster.proc.pid}/status").read_text()
        assert f"Uid:\t{uid}\t" in status, "the cluster must run as the image's user"
        assert "imported 1 nodes" in cluster.output

        run_task_through(port, tmp_path / "client")

        health = [*chroot, *image.healthcheck["Test"][1:]]
        ok = subprocess.run(health, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"127.0.0.1:{port}/auth/info" in ok.stdout

        assert cluster.stop() == 0, cluster.output
        down = subprocess.run(health, capture_output=True, text=True, timeout=30)
        assert down.returncode == 1, "health check must fail once the cluster is gone"

        db = volume / "clusterodm.db"
        assert db.is_file() and db.stat().st_uid == uid, "state belongs in the volume"
    finally:
        for started in (cluster, node):
            if started is not None:
                started.stop()
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
        image.podman("image", "umount", "-f", image.tag)
