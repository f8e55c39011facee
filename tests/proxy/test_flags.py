"""Flags that change what clients see: flood limit, S3 downloads, upload speed, TLS, config."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import FormData

from clusterodm.cli import parse_settings
from clusterodm.config import ConfigError
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually


def images_form(count: int, size: int = 100) -> FormData:
    f = FormData()
    for i in range(count):
        f.add_field("images", b"x" * size, filename=f"i{i}.jpg")
    return f


async def test_flood_limit_refuses_then_commit_pays_back(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()], flood_limit=2)
    url = cluster.url
    async with aiohttp.ClientSession() as s:
        uuids = []
        for _ in range(2):
            r = await s.post(f"{url}/task/new/init", data=FormData({"name": "n"}))
            uuids.append((await r.json())["uuid"])
        body = await (await s.post(f"{url}/task/new/init", data=FormData({"name": "n"}))).json()
        assert body["error"].startswith("Uuh, slow down!")
        # as in the original, a refused init counts too (3 now): two commits bring it to 1
        for uuid in uuids:
            await s.post(f"{url}/task/new/upload/{uuid}", data=images_form(1))
            assert "uuid" in await (await s.post(f"{url}/task/new/commit/{uuid}")).json()
        body = await (await s.post(f"{url}/task/new/init", data=FormData({"name": "n"}))).json()
        assert "uuid" in body, body


async def test_downloads_redirect_to_s3(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], downloads_from_s3="https://bucket.s3.example")
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{cluster.url}/task/new", data=images_form(1))
        uuid = (await r.json())["uuid"]
        await eventually(lambda: cluster.deps.routes.get(uuid) is not None)
        for asset, path in (
            ("all.zip", "all.zip"),
            ("orthophoto.tif", "odm_orthophoto/odm_orthophoto.tif"),
        ):
            r = await s.get(f"{cluster.url}/task/{uuid}/download/{asset}", allow_redirects=False)
            assert r.status == 302
            assert r.headers["Location"] == f"https://bucket.s3.example/{uuid}/{path}"


async def test_upload_max_speed_caps_forwarding(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], upload_max_speed=1_000_000)
    async with aiohttp.ClientSession() as s:
        start = time.monotonic()
        r = await s.post(f"{cluster.url}/task/new", data=images_form(4, size=200_000))
        uuid = (await r.json())["uuid"]
        await eventually(lambda: uuid in sim.tasks, timeout_s=10)
    # 800 KB at 1 MB/s (minus one burst) cannot reach the node in less than 0.55 s
    assert time.monotonic() - start >= 0.45  # 0.25 s of burst is allowed


def _self_signed(tmp: Path) -> tuple[str, str]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(key), str(cert)


async def test_https_and_secure_port(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    key, cert = _self_signed(tmp_path)
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], ssl_key=key, ssl_cert=cert, secure_port=0)
    secure = cluster.site_port("secure")
    insecure_ctx = ssl.create_default_context()
    insecure_ctx.check_hostname = False
    insecure_ctx.verify_mode = ssl.CERT_NONE
    async with aiohttp.ClientSession() as s:
        plain = await (await s.get(f"http://127.0.0.1:{cluster.port}/info")).json()
        tls = await (await s.get(f"https://127.0.0.1:{secure}/info", ssl=insecure_ctx)).json()
    assert plain == tls
    assert plain["version"] == "1.5.3"


def test_config_file_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"port": 4000, "admin-cli-port": 0, "flood_limit": 9}))
    s = parse_settings(["--config", str(cfg), "--port", "5000", "--no-splitmerge"])
    assert (s.port, s.admin_cli_port, s.flood_limit, s.no_splitmerge) == (5000, 0, 9, True)
    cfg.write_text(json.dumps({"colour": "blue"}))
    with pytest.raises(ConfigError, match="colour"):
        parse_settings(["--config", str(cfg)])
    with pytest.raises(ConfigError, match="ssl"):
        parse_settings(["--ssl-key", "k.pem"])
    defaults = parse_settings([])
    assert (defaults.port, defaults.admin_cli_port, defaults.admin_web_port) == (3000, 8080, 10000)


def test_queue_and_failover_flags() -> None:
    s = parse_settings(
        [
            "--max-queue",
            "7",
            "--failover-grace",
            "30",
            "--failover-retries",
            "1",
            "--keep-images-gb",
            "0.5",
        ]
    )
    assert s.max_queue == 7
    assert (s.failover.grace_s, s.failover.max_moves) == (30.0, 1)
    assert s.dispatch.keep_images_bytes == 512 * 1024**2
    assert s.dispatch.early_forwarding is True
    assert parse_settings(["--no-early-forwarding"]).dispatch.early_forwarding is False
    with pytest.raises(ConfigError, match="max-queue"):
        parse_settings(["--max-queue", "-1"])


def test_early_forwarding_idle_flag(tmp_path: Path) -> None:
    assert parse_settings([]).dispatch.early_forwarding_idle_s == 30.0
    assert parse_settings(["--early-forwarding-idle", "45"]).dispatch.early_forwarding_idle_s == 45
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"early-forwarding-idle": 12.5}))
    assert parse_settings(["--config", str(cfg)]).dispatch.early_forwarding_idle_s == 12.5
    for bad in ("0", "nan", "-3", "1e9"):
        with pytest.raises(ConfigError, match="early-forwarding-idle"):
            parse_settings(["--early-forwarding-idle", bad])
