"""The cloud-init script of a new machine: swap, Docker, registry login only when configured,
NodeODM's arguments (``-q 1``, token, webhook, S3 flags) and the GPU flag, all shell-quoted."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from typing import Any

import pytest

from clusterodm.autoscale import MachineSize, MachineSpec, parse_asr_config
from clusterodm.autoscale.bootstrap import DOCKER_INSTALL, nodeodm_args, user_data

S3 = {"accessKey": "AK1", "secretKey": "s3 secret'q", "endpoint": "s3.example", "bucket": "bk"}
SPEC = MachineSpec("clusterodm-3-x", MachineSize(5, "small"), "r1", "tok-123",
                   "https://proxy.example/commit", "", "tag-1")  # fmt: skip


def script(provider: str = "hetzner", **extra: Any) -> str:
    base: dict[str, Any] = {
        "aws": {"accessKey": "AK1", "secretKey": "aws-secret", "securityGroup": "sg",
                "s3": {"endpoint": "s3.amazonaws.com", "bucket": "bk"}},
        "hetzner": {"apiToken": "h", "s3": S3},
        "digitalocean": {"accessToken": "d", "s3": S3},
    }[provider]  # fmt: skip
    return user_data(parse_asr_config({"provider": provider, **base, **extra}), SPEC)


def docker_run(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith("docker run")]
    assert len(lines) == 1, text
    return shlex.split(lines[0])


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def test_script_starts_as_a_shell_script_and_is_valid_bash() -> None:
    text = script(nodeSetupCmd="echo ready", dockerRegistry={"url": "r.io", "username": "u",
                                                             "password": "p"})  # fmt: skip
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    done = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("add_swap", "factor"), [(1, "m * 1}"), (0.5, "m * 0.5}"), (0, None)])
def test_swap_in_proportion_to_memory(add_swap: float, factor: str | None) -> None:
    text = script(addSwap=add_swap)
    if factor is None:
        assert "swapfile" not in text
    else:
        assert factor in text and "mkswap /swapfile && swapon /swapfile" in text


def test_docker_is_installed_unless_present_before_nodeodm_starts() -> None:
    text = script(nodeSetupCmd="apt-get install -y htop")
    install = f"command -v docker >/dev/null || ({DOCKER_INSTALL})"
    assert install in text
    lines = text.splitlines()
    assert lines.index(install) < lines.index("apt-get install -y htop")
    assert lines.index("apt-get install -y htop") < next(
        i for i, line in enumerate(lines) if line.startswith("docker run")
    )


@pytest.mark.parametrize(
    ("registry", "login"),
    [
        ({"url": "", "username": "u", "password": "p"}, None),
        ({"url": "registry.example", "username": "bob", "password": "pa ss'w"},
         "printf '%s' 'pa ss'\"'\"'w' | docker login -u bob --password-stdin registry.example"),
    ],
)  # fmt: skip
def test_registry_login_only_when_configured(registry: dict[str, str], login: str | None) -> None:
    text = script(dockerRegistry=registry)
    if login is None:
        assert "docker login" not in text
    else:
        assert login in text.splitlines()
        after = text.split("| docker login", 1)[1]
        assert "pa ss" not in after and " -p " not in after.splitlines()[0]  # through stdin


def test_nodeodm_runs_one_task_with_token_webhook_and_image() -> None:
    argv = docker_run(script(dockerImage="example/nodeodm:gpu"))
    image = argv.index("example/nodeodm:gpu")
    assert argv[:image] == ["docker", "run", "-d", "--restart", "unless-stopped", "-p", "3000:3000"]
    node = argv[image + 1 :]
    assert node[:2] == ["-q", "1"]
    assert flag(node, "--token") == "tok-123"
    assert flag(node, "--webhook") == "https://proxy.example/commit"


@pytest.mark.parametrize(
    ("provider", "extra", "expected", "absent"),
    [
        ("hetzner", {}, {"--s3_access_key": "AK1", "--s3_secret_key": "s3 secret'q",
                         "--s3_endpoint": "s3.example", "--s3_bucket": "bk"},
         ["--s3_acl", "--s3_ignore_ssl"]),
        ("digitalocean", {"s3": {**S3, "ignoreSSL": True, "acl": "private"}},
         {"--s3_acl": "private"}, []),
        ("aws", {}, {"--s3_access_key": "AK1", "--s3_secret_key": "aws-secret",
                     "--s3_endpoint": "s3.amazonaws.com", "--s3_acl": "public-read"},
         ["--s3_ignore_ssl"]),
    ],
)  # fmt: skip
def test_s3_flags(
    provider: str, extra: dict[str, Any], expected: dict[str, str], absent: list[str]
) -> None:
    argv = docker_run(script(provider, **extra))
    for name, value in expected.items():
        assert flag(argv, name) == value
    for name in absent:
        assert name not in argv
    if extra.get("s3", {}).get("ignoreSSL"):
        assert "--s3_ignore_ssl" in argv


def test_no_s3_flags_without_s3() -> None:
    config = parse_asr_config({"provider": "local", "command": "x"})
    args = nodeodm_args(config, SPEC)
    assert args == ["-q", "1", "--webhook", "https://proxy.example/commit", "--token", "tok-123"]


@pytest.mark.parametrize(("gpu", "expected"), [(True, True), (False, False)])
def test_gpu_flag(gpu: bool, expected: bool) -> None:
    argv = docker_run(script(dockerGpu=gpu))
    image = argv.index("opendronemap/nodeodm")
    assert ("--gpus" in argv[:image] and flag(argv, "--gpus") == "all") is expected


def test_data_dir_mount_for_aws() -> None:
    argv = docker_run(script("aws", dockerDataDirMountPath="/mnt/data"))
    assert flag(argv, "--mount") == "type=bind,source=/mnt/data,target=/var/www/data"
    assert "--mount" not in docker_run(script("aws"))


def test_hostile_values_stay_single_arguments() -> None:
    spec = MachineSpec("n", MachineSize(5, "s"), "r", "t; rm -rf /", "http://p/commit?a=1&b=$(x)",
                       "", "tag")  # fmt: skip
    config = parse_asr_config({"provider": "hetzner", "apiToken": "h", "s3": S3})
    argv = docker_run(user_data(config, spec))
    assert flag(argv, "--token") == "t; rm -rf /"
    assert flag(argv, "--webhook") == "http://p/commit?a=1&b=$(x)"
