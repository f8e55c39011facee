"""SimNodeConfig: the simulated node's settings, flags of NodeODM's test mode plus fault knobs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SimNodeConfig:
    """Settings of one simulated node; the fault knobs may be changed while it runs.

    Mutable on purpose: the cluster's tests flip ``hang``, ``garbage`` and
    ``drop_uploads_after`` on a live node to simulate failures.
    """

    token: str | None = None
    max_images: int | None = None
    parallel: int = 1  # NodeODM's -q/--parallel_queue_processing
    test_seconds: float = 0.0  # duration of a simulated run
    test_fail_tasks: bool = False
    test_drop_uploads: bool = False  # HTTP 500 "Internal Server Error" on every second upload
    webhook: str | None = None
    zip_size: int | None = None  # bytes of all.zip; None = a small realistic zip (~1 MB)
    max_concurrency: int | None = None
    # Fault knobs for the cluster's tests:
    hang: bool = False  # every request waits (no answer) until turned off or the node stops
    garbage: bool = False  # every request answers 200 with a non-JSON body
    drop_uploads_after: int | None = None  # after N good upload requests, uploads get HTTP 500
    hang_uploads: bool = False  # uploads are stored, then their answer waits until turned off
