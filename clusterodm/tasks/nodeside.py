"""What a node holds under a task's uuid: cleared before an attempt, counted after its commit.

NodeODM keeps an upload's images in ``tmp/<uuid>/`` across inits: ``/task/new/init`` with the
same ``set-uuid`` reuses the folder, and an image sent again is kept beside the first copy
under another name (``a_.jpg``). What a node buffered cannot be known from the cluster's own
records (a record is written after the node answered, a proxy killed in between forgets it, an
upload that timed out may still have landed), so an attempt never trusts a record:

- before it sends anything, ``clear`` leaves the node holding nothing under the uuid. The API
  has no call that drops a staged upload, so a staged one is committed (which turns it into a
  task) and that task removed (NodeODM's ``/task/remove`` waits for its initialisation, so no
  folder is left behind). Both answer an error when there is nothing, which is what we want;
- after its commit, ``verify`` asks the node how many images the task has; a count other than
  the images staged at the proxy means the node also holds something from before (or lost
  something): the task is removed there and the attempt fails, to start afresh.

Every image was acknowledged at least once and the node held nothing before, so a count equal
to the staged count means each image is there exactly once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from clusterodm.errors import NodeRejected
from clusterodm.model import Node
from clusterodm.nodes.client import NodeClient

log = logging.getLogger(__name__)

# files NodeODM takes out of the images folder while it initialises a task (GCP and alignment
# files go to gcp/, archives are extracted or dropped): its count may leave them out
_NOT_IMAGES = re.compile(r"(?i)^(?:.*\.txt|.*\.zip|align\.(?:las|laz|tif))$")


async def clear(client: NodeClient, node: Node, uuid: str) -> None:
    """Leave ``node`` holding nothing under ``uuid`` (see module doc). NodeUnreachable if the
    node cannot be asked; a node that answers with errors holds nothing to clear."""
    committed = True
    try:
        await client.commit(node, uuid)
    except NodeRejected:
        committed = False  # nothing staged there (or a task already, removed below)
    answer = await client.action(node, "remove", uuid, {})
    if committed or answer.get("success") is True:
        log.info("task %s: removed what %s held of an earlier attempt", uuid, node.key)


def count_matches(info: dict[str, Any], files: list[Path]) -> bool:
    """Whether the node's ``imagesCount`` is the number of files staged for the task. A node
    that does not report a count (not NodeODM's API) cannot be checked: taken as it is."""
    count = info.get("imagesCount")
    if count is None:
        return True
    if not isinstance(count, int) or isinstance(count, bool):
        return False
    images = sum(1 for f in files if not _NOT_IMAGES.match(f.name))
    return count in (len(files), images)


async def verify(client: NodeClient, node: Node, uuid: str, files: list[Path]) -> None:
    """After a commit: the node's task has as many images as were staged, or it is removed
    there and NodeRejected raised (the attempt starts afresh)."""
    info = await client.task_info(node, uuid)
    if count_matches(info, files):
        return
    held = info.get("imagesCount")
    log.warning(
        "task %s: %s holds %s images, %d were sent; removing it there",
        uuid,
        node.key,
        held,
        len(files),
    )
    await client.action(node, "remove", uuid, {})
    raise NodeRejected(f"{node.key} held {held} images instead of {len(files)}", node.key)
