"""Results served from S3 (``--downloads-from-s3``): where a task's asset lives in the bucket.

Nodes started by the autoscaler upload their results to ``<bucket>/<uuid>/``; the proxy then
redirects ``/task/<uuid>/download/<asset>`` to the object instead of asking a node that may be
gone. ``orthophoto.tif`` maps to its path inside the results, as in the original. For a bucket
that is not public-read, the redirect goes to a presigned URL (the original streamed the object
through the proxy). boto3 is imported only here and only when S3 is configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web

from clusterodm.errors import CloudError

ASSET_PATHS = {"orthophoto.tif": "odm_orthophoto/odm_orthophoto.tif"}
PRESIGN_EXPIRES_S = 3600
S3_TIMEOUT_S = 15.0
_AWS_REGION = re.compile(r"s3[.-]([a-z0-9-]+)\.amazonaws\.com")


def s3_asset_url(base_url: str, uuid: str, asset: str) -> str:
    path = ASSET_PATHS.get(asset, asset)
    return f"{base_url.rstrip('/')}/{quote(uuid)}/{quote(path)}"


def s3_asset_key(uuid: str, asset: str) -> str:
    return f"{uuid}/{ASSET_PATHS.get(asset, asset)}"


@dataclass(frozen=True, slots=True)
class S3Access:
    """Credentials for one bucket. ``endpoint_url`` has its scheme."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    verify: bool = True
    region: str = ""

    def client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise CloudError("S3 needs boto3: pip install 'clusterodm[aws]'") from None
        m = _AWS_REGION.search(self.endpoint_url)
        region = self.region or (m.group(1) if m else "us-east-1")
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=self.verify,
            config=Config(
                connect_timeout=S3_TIMEOUT_S,
                read_timeout=S3_TIMEOUT_S,
                retries={"max_attempts": 2},
                signature_version="s3v4",
            ),
        )


def check_bucket(access: S3Access) -> None:
    """Write a small object, as the original does at start-up (blocking: run in a thread)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise CloudError("S3 needs boto3: pip install 'clusterodm[aws]'") from None
    try:
        access.client().put_object(Bucket=access.bucket, Key="test.txt", Body=b"")
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "error")
        raise CloudError(f"Cannot connect to S3. Check your S3 configuration: {code}") from None
    except BotoCoreError as e:
        raise CloudError(f"Cannot connect to S3. Check your S3 configuration: {e}") from None


def presigned_url(
    access: S3Access, uuid: str, asset: str, expires_s: int = PRESIGN_EXPIRES_S
) -> str:
    """A time-limited GET link to a private object (signed locally, no request made)."""
    url: str = access.client().generate_presigned_url(
        "get_object",
        Params={"Bucket": access.bucket, "Key": s3_asset_key(uuid, asset)},
        ExpiresIn=expires_s,
    )
    return url


@dataclass(frozen=True, slots=True)
class S3Downloads:
    """Where ``download/<asset>`` redirects: the public bucket URL, or a presigned one."""

    base_url: str
    private: S3Access | None = None

    def url(self, uuid: str, asset: str) -> str:
        if self.private is not None:
            return presigned_url(self.private, uuid, asset)
        return s3_asset_url(self.base_url, uuid, asset)


S3_DOWNLOADS = web.AppKey("s3-downloads", S3Downloads)
