"""A simulated NodeODM node (``python -m clusterodm.simnode``) for tests and benchmarks.

It speaks the NodeODM API like NodeODM started with ``--test`` (same routes, fields, status
codes and error texts), with realistic progress, real cancel and ranged downloads, plus fault
knobs for the cluster's tests. It imports nothing from the rest of ``clusterodm``, so it stays
an independent double of the real node.
"""

from .config import SimNodeConfig
from .server import SimNode, start_simnode
from .tasks import Task, TaskStatus

__all__ = ["SimNode", "SimNodeConfig", "Task", "TaskStatus", "start_simnode"]
