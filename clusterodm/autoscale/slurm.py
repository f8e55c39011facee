"""``slurm`` provider: a NodeODM job per task on an HPC cluster (``sbatch``/``squeue``/``scancel``).

The job runs ``command`` (a template with ``{port}``, ``{token}``, ``{webhook}``, ``{python}``)
with the extra ``sbatch`` arguments of the config (partition, time, GPUs...). We choose the port
(from ``portRange``), find the job's node with ``squeue``, its address with ``scontrol``, and
cancel the job at teardown. Jobs carry the cluster tag in their comment, so the orphan sweep
finds them. ``slurmConf`` sets ``SLURM_CONF`` for every command. Every command has a timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
import shlex
import sys

from clusterodm.autoscale.base import Machine, MachineSpec
from clusterodm.autoscale.config import AsrConfig
from clusterodm.errors import CloudError

GONE_STATES = {
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
}


class SlurmProvider:
    name = "slurm"

    def __init__(self, config: AsrConfig) -> None:
        self.template = str(config.get("command"))
        extra = config.get("sbatch", [])
        self.sbatch_args = (
            [str(a) for a in extra] if isinstance(extra, list) else shlex.split(extra)
        )
        low, high = config.get("portRange", [30000, 40000])
        self.ports = (int(low), int(high))
        self.timeout_s = float(config.get("commandTimeout", 30))
        self.output = str(config.get("output", "/dev/null"))
        self.env = dict(os.environ)
        if config.get("slurmConf"):
            self.env["SLURM_CONF"] = str(config.get("slurmConf"))

    async def _run(self, *argv: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
            )
        except OSError as e:
            raise CloudError(f"cannot run {argv[0]}: {e.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            proc.kill()
            await proc.wait()
            raise CloudError(f"{argv[0]} did not answer within {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            raise CloudError(f"{argv[0]} failed: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    def _command(self, spec: MachineSpec, port: int) -> str:
        try:
            return self.template.format(
                python=shlex.quote(sys.executable),
                port=port,
                token=shlex.quote(spec.token),
                webhook=shlex.quote(spec.webhook),
                name=spec.name,
            )
        except (KeyError, IndexError, ValueError) as e:
            raise CloudError(f"command: bad placeholder in the template: {e}") from None

    def sbatch_argv(self, spec: MachineSpec, port: int) -> list[str]:
        return [
            "sbatch",
            "--parsable",
            f"--job-name={spec.name}",
            f"--comment={spec.cluster_tag}",
            f"--output={self.output}",
            *self.sbatch_args,
            "--wrap",
            "exec " + self._command(spec, port),
        ]

    async def start(self) -> None:
        await self._run("squeue", "-h", "-o", "%i")  # Slurm answers

    async def create(self, spec: MachineSpec) -> Machine:
        port = random.randint(*self.ports)
        out = await self._run(*self.sbatch_argv(spec, port))
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise CloudError(f"sbatch gave no job id: {out.strip()!r}")
        return Machine(job_id, spec.name, spec.region, "", port)

    async def locate(self, machine: Machine) -> Machine:
        out = (await self._run("squeue", "-h", "-j", machine.id, "-o", "%T|%N")).strip()
        if not out:
            raise CloudError(f"job {machine.id} ({machine.name}) is gone")
        state, _, nodes = out.splitlines()[0].partition("|")
        if state in GONE_STATES:
            raise CloudError(f"job {machine.id} ({machine.name}) is {state.lower()}")
        if state != "RUNNING" or not nodes:
            return machine
        hosts = (await self._run("scontrol", "show", "hostnames", nodes)).split()
        host = await self._address(hosts[0]) if hosts else ""
        return Machine(machine.id, machine.name, machine.region, host, machine.port)

    async def _address(self, node: str) -> str:
        out = await self._run("scontrol", "show", "node", node)
        for field in out.split():
            if field.startswith("NodeAddr="):
                return field.split("=", 1)[1]
        return node

    async def destroy(self, machine: Machine) -> None:
        if not machine.id.isdigit():
            return
        try:
            await self._run("scancel", machine.id)
        except CloudError as e:
            if "Invalid job id" not in e.message:
                raise

    async def list_tagged(self, cluster_tag: str) -> list[Machine]:
        out = await self._run("squeue", "-h", "-o", "%i|%j|%k")
        found = []
        for line in out.splitlines():
            parts = line.strip().split("|", 2)
            if len(parts) == 3 and parts[2] == cluster_tag:
                found.append(Machine(parts[0], parts[1], "slurm"))
        return found

    def describe(self, spec: MachineSpec) -> list[str]:
        return ["command: " + shlex.join(self.sbatch_argv(spec, self.ports[0]))]

    async def close(self) -> None:
        return None
