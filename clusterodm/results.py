"""Results served from S3 (``--downloads-from-s3``): where a task's asset lives in the bucket.

Nodes started by the autoscaler upload their results to ``<bucket>/<uuid>/``; the proxy then
redirects ``/task/<uuid>/download/<asset>`` to the object instead of asking a node that may be
gone. ``orthophoto.tif`` maps to its path inside the results, as in the original.
"""

from __future__ import annotations

from urllib.parse import quote

ASSET_PATHS = {"orthophoto.tif": "odm_orthophoto/odm_orthophoto.tif"}


def s3_asset_url(base_url: str, uuid: str, asset: str) -> str:
    path = ASSET_PATHS.get(asset, asset)
    return f"{base_url.rstrip('/')}/{quote(uuid)}/{quote(path)}"
