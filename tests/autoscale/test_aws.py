"""The aws provider and S3 through boto3 against moto's server on loopback."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import boto3
import pytest
from moto.server import ThreadedMotoServer

from clusterodm.autoscale import MachineSize, MachineSpec, parse_asr_config
from clusterodm.autoscale.aws import TAG, AwsProvider
from clusterodm.errors import CloudError
from clusterodm.results import S3Access, check_bucket, presigned_url
from tests.autoscale.conftest import AsrClusterFactory, fast

KEYS = {"aws_access_key_id": "AKIATESTING", "aws_secret_access_key": "testing-secret-key"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def aws_config(url: str, **extra: Any) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **KEYS)
    s3.create_bucket(Bucket="results-bucket")
    return {
        "provider": "aws",
        "endpoint": url,
        "accessKey": KEYS["aws_access_key_id"],
        "secretKey": KEYS["aws_secret_access_key"],
        "securityGroup": "default",
        "ami": "ami-12c6146b",  # one of moto's images
        "region": ["us-east-1", "eu-west-1"],
        "s3": {"endpoint": url, "bucket": "results-bucket", "acl": "private"},
        "spot": True,
        "imageSizeMapping": [
            {"maxImages": 5, "slug": "t3.micro", "spotPrice": 0.02, "storage": 20},
            {"maxImages": 50, "slug": "t3.large", "spotPrice": 0.1, "storage": 100},
        ],
        **extra,
    }


def spec(tag: str, region: str = "us-east-1") -> MachineSpec:
    return MachineSpec(
        "clusterodm-3-abc", MachineSize(5, "t3.micro", 20, 0.02), region, "tok",
        "http://proxy/commit", "#!/bin/bash\necho hi\n", tag,
    )  # fmt: skip


async def test_create_locate_list_destroy(moto_url: str) -> None:
    provider = AwsProvider(parse_asr_config(aws_config(moto_url)))
    await provider.start()
    machine = await provider.create(spec("tag-1", "eu-west-1"))
    located = await provider.locate(machine)
    assert located.host, "moto gives the instance an address"
    ec2 = boto3.client("ec2", endpoint_url=moto_url, region_name="eu-west-1", **KEYS)
    inst = ec2.describe_instances(InstanceIds=[machine.id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[TAG] == "tag-1" and tags["Name"] == "clusterodm-3-abc"
    assert inst["InstanceType"] == "t3.micro"
    data = ec2.describe_instance_attribute(InstanceId=machine.id, Attribute="userData")
    assert base64.b64decode(data["UserData"]["Value"]).startswith(b"#!/bin/bash")
    assert [m.id for m in await provider.list_tagged("tag-1")] == [machine.id]
    assert await provider.list_tagged("tag-2") == []
    await provider.destroy(machine)
    assert await provider.list_tagged("tag-1") == []
    with pytest.raises(CloudError):
        await provider.locate(machine)
    args = provider.run_args(spec("t"))
    assert args["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] == "0.02"
    assert args["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 20


async def test_sdk_errors_become_cloud_errors(moto_url: str) -> None:
    config = parse_asr_config(aws_config(moto_url, securityGroup="sg-doesnotexist"))
    provider = AwsProvider(config)
    with pytest.raises(CloudError, match=r"run_instances in us-east-1.*InvalidGroup"):
        await provider.create(spec("x"))


async def test_s3_check_and_presigned_url(moto_url: str) -> None:
    aws_config(moto_url)
    access = S3Access(moto_url, "results-bucket", KEYS["aws_access_key_id"], "testing-secret-key")
    check_bucket(access)
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **KEYS)
    key = "u1/odm_orthophoto/odm_orthophoto.tif"
    s3.put_object(Bucket="results-bucket", Key=key, Body=b"tif")
    url = presigned_url(access, "u1", "orthophoto.tif")
    async with aiohttp.ClientSession() as session:
        assert await (await session.get(url)).read() == b"tif"
    with pytest.raises(CloudError, match="Cannot connect to S3"):
        check_bucket(S3Access(moto_url, "no-such-bucket-here", "AKIATESTING", "x"))


async def test_cluster_start_sweeps_orphans_and_redirects_downloads(
    moto_url: str, asr_cluster: AsrClusterFactory
) -> None:
    config = aws_config(moto_url, clusterTag="cluster-aws-test")
    orphan = await AwsProvider(parse_asr_config(config)).create(spec("cluster-aws-test"))
    cluster = await asr_cluster(fast(**config))
    asr = cluster.extra["autoscaler"]
    assert await asr.provider.list_tagged("cluster-aws-test") == [], orphan.id
    view = asr.view_command(10)
    assert "t3.large" in view and "us-east-1" in view and "#!/bin/bash" in view
    assert "testing-secret-key" not in view and "AKIATESTING" not in view
    assert "--token ***" in view.replace("'", "")
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **KEYS)
    uuid = "3f2d9d1e-0a47-4c1b-9b0e-7f1c2a3b4c5d"
    await cluster.deps.routes.add(uuid, cluster.registry.nodes()[0].key, "")
    s3.put_object(Bucket="results-bucket", Key=f"{uuid}/all.zip", Body=b"zip")
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{cluster.url}/task/{uuid}/download/all.zip", allow_redirects=False)
        assert r.status == 302
        location = r.headers["Location"]
        assert "Signature" in location or "X-Amz-Signature" in location
        assert await (await s.get(location)).read() == b"zip"
