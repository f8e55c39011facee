"""Static checks of the shipped files that cannot run here: docker-compose.yml (no container can
start on CI), the apptainer definition (apptainer is not packaged for Debian 12), and the parts
of the Dockerfile and .dockerignore that the image test relies on. Fast; no tools needed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from typing import Any

import pytest

from tests.packaging import REPO

APPTAINER_SECTIONS = {
    "setup",
    "files",
    "post",
    "environment",
    "runscript",
    "startscript",
    "test",
    "labels",
    "help",
}


def load_compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads docker-compose.yml")
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_wires_cluster_to_nodes_through_nodes_json() -> None:
    services = load_compose()["services"]
    cluster = services["clusterodm"]
    nodes = {name: s for name, s in services.items() if s.get("image") == "opendronemap/nodeodm"}
    assert nodes, "at least one NodeODM service"

    assert cluster["build"] == "."
    published = {p.split(":")[-1] for p in cluster["ports"]}
    assert published == {"3000", "8080", "10000"}
    assert set(cluster["depends_on"]) == set(nodes)

    mounts = [v.split(":") for v in cluster["volumes"]]
    assert any(m[1] == "/var/lib/clusterodm" for m in mounts), "state in a volume"
    nodes_json = next(m for m in mounts if m[1] == "/var/lib/clusterodm/nodes.json")
    listed = json.loads((REPO / nodes_json[0]).read_text())
    assert {(n["hostname"], n["port"]) for n in listed} == {(name, "3000") for name in nodes}


def test_compose_volumes_are_declared() -> None:
    data = load_compose()
    named = {
        v.split(":")[0]
        for s in data["services"].values()
        for v in s.get("volumes", [])
        if not v.startswith((".", "/"))
    }
    assert named <= set(data.get("volumes") or {})


def parse_definition(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header keys and ``%section`` bodies of an apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := re.match(r"^%(\w+)\s*$", line):
            current = m.group(1)
            assert current not in sections, f"%{current} twice"
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, sections


def test_apptainer_definition() -> None:
    header, sections = parse_definition((REPO / "packaging/clusterodm.def").read_text())
    assert header == {"Bootstrap": "docker", "From": "python:3.11-slim"}
    assert set(sections) <= APPTAINER_SECTIONS
    assert 'exec /opt/clusterodm/bin/clusterodm "$@"' in sections["runscript"]
    for line in sections["files"].split("\n"):
        if line.strip():
            source = line.split()[0]
            assert (REPO / source).exists(), f"%files source {source} is missing"
    for name in ("post", "runscript", "startscript", "test", "environment"):
        checked = subprocess.run(
            ["sh", "-n"], input=sections[name], capture_output=True, text=True, timeout=10
        )
        assert checked.returncode == 0, f"%{name}: {checked.stderr}"


def test_dockerfile_base_is_selectable_and_user_is_not_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${BASE}" for f in froms)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_what_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    dockerfile = (REPO / "Dockerfile").read_text()
    copied: set[str] = set()
    for m in re.finditer(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        copied.update(m.group(1).split()[:-1])
    assert copied, "the Dockerfile copies the sources"
    assert copied <= allowed, f"excluded by .dockerignore: {copied - allowed}"
    for path in copied:
        assert (REPO / path).exists(), path


@pytest.mark.parametrize(
    ("flags", "url"),
    [
        ([], "http://127.0.0.1:3000/auth/info"),
        (["--data-dir", "/var/lib/clusterodm", "-p", "4000"], "http://127.0.0.1:4000/auth/info"),
        (["--bind", "10.1.2.3", "--port", "3001"], "http://10.1.2.3:3001/auth/info"),
        (["--bind", "::1"], "http://[::1]:3000/auth/info"),
        (["--ssl-key", "k.pem", "--ssl-cert", "c.pem"], "https://127.0.0.1:3000/auth/info"),
        (
            ["--ssl-key", "k.pem", "--ssl-cert", "c.pem", "--secure-port", "443"],
            "http://127.0.0.1:3000/auth/info",
        ),
    ],
)
def test_healthcheck_probes_the_clusters_own_port(flags: list[str], url: str) -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", REPO / "packaging/healthcheck.py")
    assert spec is not None and spec.loader is not None
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    assert healthcheck.probe_url(flags) == url
