"""The cloud-init script a new cloud machine runs at first boot (no docker-machine, no SSH).

It adds swap in proportion to the memory (``addSwap``), installs Docker unless the image has it,
runs ``nodeSetupCmd``, logs in to a registry when asked, then starts NodeODM with one task at a
time (``-q 1``), the S3 settings, the machine's own token and the cluster's ``/commit`` webhook.
Every value is shell-quoted; the registry password goes through stdin, never the command line.
"""

from __future__ import annotations

import shlex

from clusterodm.autoscale.base import MachineSpec
from clusterodm.autoscale.config import AsrConfig

DOCKER_INSTALL = "curl -fsSL https://get.docker.com | sh"


def nodeodm_args(config: AsrConfig, spec: MachineSpec) -> list[str]:
    """NodeODM's command-line arguments for a machine made from ``spec``."""
    args = ["-q", "1"]
    s3 = config.s3
    if s3 is not None:
        args += ["--s3_access_key", s3.access_key, "--s3_secret_key", s3.secret_key]
        args += ["--s3_endpoint", s3.endpoint, "--s3_bucket", s3.bucket]
        if config.provider == "aws" or s3.acl != "public-read":
            args += ["--s3_acl", s3.acl]
        if s3.ignore_ssl:
            args.append("--s3_ignore_ssl")
    args += ["--webhook", spec.webhook, "--token", spec.token]
    return args


def user_data(config: AsrConfig, spec: MachineSpec) -> str:
    """A shell script for cloud-init (user data starting with ``#!``)."""
    q = shlex.quote
    lines = ["#!/bin/bash", "set -euo pipefail", "exec >>/var/log/clusterodm-setup.log 2>&1"]
    if config.add_swap > 0:
        lines += [
            "mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)",
            f'swap_kb=$(awk -v m="$mem_kb" \'BEGIN {{printf "%d", m * {config.add_swap:g}}}\')',
            'if [ ! -f /swapfile ] && [ "$swap_kb" -gt 0 ]; then',
            '  fallocate -l "${swap_kb}K" /swapfile && chmod 600 /swapfile',
            "  mkswap /swapfile && swapon /swapfile",
            "fi",
        ]
    lines.append(f"command -v docker >/dev/null || ({DOCKER_INSTALL})")
    if config.node_setup_cmd:
        lines.append(config.node_setup_cmd)
    reg = config.registry
    if reg is not None:
        lines.append(
            f"printf '%s' {q(reg.password)} | docker login -u {q(reg.username)} "
            f"--password-stdin {q(reg.url)}"
        )
    run = ["docker", "run", "-d", "--restart", "unless-stopped", "-p", f"{spec.port}:3000"]
    mount = config.get("dockerDataDirMountPath", "") or config.get("dataDirMountPath", "")
    if mount:
        run += ["--mount", f"type=bind,source={mount},target=/var/www/data"]
    if config.docker_gpu:
        run += ["--gpus", "all"]
    run.append(config.docker_image)
    run += nodeodm_args(config, spec)
    lines.append(" ".join(q(a) for a in run))
    return "\n".join(lines) + "\n"
