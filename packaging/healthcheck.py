"""Container health check: is this container's ClusterODM proxy answering?

Exit 0 when ``GET /auth/info`` answers 200 (that path needs no token, so ``--token`` does not
matter), 1 otherwise. The port, address and scheme come from the running cluster's own command
line, parsed by the cluster's own parser, so ``docker run image --port 4000`` (or ``--bind``,
``--ssl-key``, ``--config``) needs no change to the check. No process started from the image's
entry point means unhealthy.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from pathlib import Path

from clusterodm.cli import parse_settings

ENTRY = "/opt/clusterodm/bin/clusterodm"  # the image's entry point
TIMEOUT_S = 5.0
WILDCARD_BINDS = {"", "0.0.0.0", "::"}


def command_lines() -> list[list[str]]:
    """Every process's argv, PID 1 first."""
    pids = sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)
    lines = []
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        lines.append([a.decode(errors="replace") for a in raw.split(b"\0")[:-1]])
    return lines


def cluster_args() -> list[str] | None:
    """The flags the running cluster was started with, or None when it is not running.

    Python shows up as ``python /opt/clusterodm/bin/clusterodm ...``, PID 1 in a container.
    """
    for argv in command_lines():
        for i, arg in enumerate(argv[:2]):
            if arg == ENTRY:
                return argv[i + 1 :]
    return None


def probe_url(args: list[str]) -> str:
    settings = parse_settings(args)
    host = "127.0.0.1" if settings.bind in WILDCARD_BINDS else settings.bind
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.ssl and settings.secure_port is None else "http"
    return f"{scheme}://{host}:{settings.port}/auth/info"


def main() -> int:
    args = cluster_args()
    if args is None:
        print(f"unhealthy: no {ENTRY} process", file=sys.stderr)
        return 1
    url = probe_url(args)
    # the certificate is for the public name, not for loopback: only liveness is checked here
    context = ssl._create_unverified_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
            ok = response.status == 200
    except Exception as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1
    print(f"healthy: {url}" if ok else f"unhealthy: {url}: HTTP {response.status}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
