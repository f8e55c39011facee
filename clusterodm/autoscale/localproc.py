"""``local`` provider: nodes as processes on this machine, one per task, from a command template.

For users with one big machine (or tests): ``command`` is a template such as
``{python} -m clusterodm.simnode --port {port} --token {token} --webhook {webhook}`` or a
NodeODM start command. We pick a free port, start the process in its own session (its children
go with it), and stop the whole group at teardown (SIGTERM, then SIGKILL). Each process carries
the cluster tag in its environment, so the orphan sweep finds processes a previous run left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from clusterodm.autoscale.base import Machine, MachineSpec
from clusterodm.autoscale.config import AsrConfig
from clusterodm.errors import CloudError

log = logging.getLogger(__name__)

TAG_ENV = "CLUSTERODM_CLUSTER_TAG"
NAME_ENV = "CLUSTERODM_MACHINE"
STOP_WAIT_S = 5.0


def render_command(template: str, spec: MachineSpec, port: int) -> list[str]:
    """The template filled in and split like a shell would (no shell runs it)."""
    try:
        text = template.format(
            python=shlex.quote(sys.executable),
            port=port,
            token=shlex.quote(spec.token),
            webhook=shlex.quote(spec.webhook),
            name=spec.name,
        )
    except (KeyError, IndexError, ValueError) as e:
        raise CloudError(f"command: bad placeholder in the template: {e}") from None
    return shlex.split(text)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class LocalProvider:
    name = "local"

    def __init__(self, config: AsrConfig) -> None:
        self.template = str(config.get("command"))
        self.host = str(config.get("host", "127.0.0.1"))
        log_dir = config.get("logDir", "")
        self.log_dir = Path(log_dir) if log_dir else None
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self) -> None:
        render_command(self.template, _probe_spec(), 1)  # placeholders are checked at start

    async def create(self, spec: MachineSpec) -> Machine:
        port = free_port(self.host)
        argv = render_command(self.template, spec, port)
        env = {**os.environ, TAG_ENV: spec.cluster_tag, NAME_ENV: spec.name}
        out: Any = asyncio.subprocess.DEVNULL
        log_file = None
        if self.log_dir is not None:
            log_file = await asyncio.to_thread(_open_log, self.log_dir / f"{spec.name}.log")
            out = log_file
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            raise CloudError(f"cannot start {argv[0]}: {e.strerror}") from None
        finally:
            if log_file is not None:
                log_file.close()
        self._procs[str(proc.pid)] = proc
        return Machine(str(proc.pid), spec.name, spec.region, "", port)

    async def locate(self, machine: Machine) -> Machine:
        proc = self._procs.get(machine.id)
        if proc is not None and proc.returncode is not None:
            raise CloudError(f"{machine.name} exited with code {proc.returncode}")
        if proc is None and not _alive(int(machine.id)):
            raise CloudError(f"{machine.name} is not running")
        return Machine(machine.id, machine.name, machine.region, self.host, machine.port)

    async def destroy(self, machine: Machine) -> None:
        try:
            pid = int(machine.id)
        except ValueError:
            return
        proc = self._procs.pop(machine.id, None)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if await self._gone(pid, proc):
                return
        raise CloudError(f"process {pid} ({machine.name}) does not stop")

    async def _gone(self, pid: int, proc: asyncio.subprocess.Process | None) -> bool:
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
                return True
            except (TimeoutError, asyncio.TimeoutError):
                return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_S
        while _alive(pid):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        """Our session leaders, found through their environment (Linux ``/proc``)."""
        return await asyncio.to_thread(_scan_proc, cluster_tag)

    def describe(self, spec: MachineSpec) -> list[str]:
        return ["command: " + shlex.join(render_command(self.template, spec, 0))]

    async def close(self) -> None:
        return None


def _open_log(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _scan_proc(cluster_tag: str) -> list[Machine]:
    found = []
    wanted = f"{TAG_ENV}={cluster_tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) != pid or not _alive(pid):
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in env:
            name = next(
                (v.split(b"=", 1)[1].decode() for v in env if v.startswith(NAME_ENV.encode())), ""
            )
            found.append(Machine(str(pid), name, "local"))
    return found


def _probe_spec() -> MachineSpec:
    from clusterodm.autoscale.base import MachineSize

    return MachineSpec("probe", MachineSize(1, "local"), "local", "t", "http://x/commit", "", "")
