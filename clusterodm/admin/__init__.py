"""Admin fronts: the telnet CLI and the web page, both driving ``AdminCommands``."""

from clusterodm.admin.commands import AdminCommands, NodeView
from clusterodm.admin.telnet import AdminCli, start_cli
from clusterodm.admin.web import build_admin_app

__all__ = ["AdminCli", "AdminCommands", "NodeView", "build_admin_app", "start_cli"]
