"""The ``slurm`` provider for real: a one-machine Slurm cluster (slurmctld + slurmd + munge)
started once for this module in a temporary directory, then the whole task lifecycle on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from clusterodm.autoscale import MachineSize, MachineSpec, parse_asr_config
from clusterodm.autoscale.slurm import SlurmProvider
from clusterodm.model import TaskStage
from tests.autoscale.conftest import SIMNODE, AsrClusterFactory, fast
from tests.autoscale.test_localproc import images_form
from tests.helpers import eventually

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
SLURM_CONF = """\
ClusterName=clusterodmtest
SlurmctldHost=localhost
AuthInfo=socket={s}/munge/munge.sock
StateSaveLocation={s}/ctld
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _unavailable() -> str | None:
    missing = [
        d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()
    ]
    if missing:
        return f"Slurm is not installed (apt-get install slurm-wlm munge): missing {missing}"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


def _wait(cond: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"slurm: {what} not reached in {timeout_s} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """SLURM_CONF of a running one-node cluster; skipped here if impossible, failed under CI."""
    why = _unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    s = tmp_path_factory.mktemp("slurm")
    for d in ("munge", "ctld", "spool", "log"):
        (s / d).mkdir()
    key = s / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = s / "munge" / "munge.sock"
    munged = shutil.which("munged") or "/usr/sbin/munged"
    subprocess.run(
        [munged, "--force", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={s}/munge/munged.pid", f"--seed-file={s}/munge/munged.seed",
         f"--log-file={s}/log/munged.log"],
        check=True, timeout=10,
    )  # fmt: skip
    conf = s / "slurm.conf"
    conf.write_text(SLURM_CONF.format(s=s))
    env = {**os.environ, "SLURM_CONF": str(conf)}

    def run(*argv: str) -> str:
        return subprocess.run(
            argv, env=env, check=True, timeout=10, capture_output=True, text=True
        ).stdout

    try:
        subprocess.run(["slurmctld", "-i"], env=env, check=True, timeout=10)
        subprocess.run(["slurmd"], env=env, check=True, timeout=10)
        _wait(lambda: run("sinfo", "-h", "-o", "%T").strip() == "idle", 15, "idle node")
        yield conf
    finally:
        if (s / "slurmctld.pid").exists():
            for job in run("squeue", "-h", "-o", "%i").split():
                subprocess.run(["scancel", job], env=env, timeout=10)
            _wait(lambda: not run("squeue", "-h").strip(), 15, "empty queue")
        pids = []
        for f in ("slurmd.pid", "slurmctld.pid"):
            if (s / f).exists():
                pid = int((s / f).read_text().strip())
                pids.append(pid)
                os.kill(pid, signal.SIGTERM)
        _wait(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 15, "daemons stop")
        subprocess.run([munged, f"--socket={sock}", "--stop"], timeout=10)


async def test_task_lifecycle_on_a_slurm_job(slurm: Path, asr_cluster: AsrClusterFactory) -> None:
    cluster = await asr_cluster(
        fast(
            provider="slurm",
            command=SIMNODE + " --test_seconds 0.3",
            slurmConf=str(slurm),
            sbatch=["--time=10", "--cpus-per-task=1"],
            portRange=[21000, 29000],
            pollInterval=0.2,
        )
    )
    provider = cluster.extra["autoscaler"].provider
    async with aiohttp.ClientSession() as s:
        uuid = (await (await s.post(f"{cluster.url}/task/new", data=images_form(1))).json())["uuid"]
        auto = await eventually(
            lambda: [n for n in cluster.registry.nodes() if n.auto_spawned],
            timeout_s=20,
            message="slurm job online as a node",
        )
        job = auto[0].machine["id"]
        assert auto[0].hostname == "127.0.0.1"
        assert [m.id for m in await provider.list_tagged(cluster.extra["autoscaler"].cluster_tag)]
        await eventually(
            lambda: not any(n.auto_spawned for n in cluster.registry.nodes()),
            timeout_s=20,
            message="teardown",
        )
        entry = cluster.deps.table.get(uuid)
        assert entry is not None and entry.stage is TaskStage.FINISHED
        assert int(entry.status) == 40

        async def job_gone() -> bool:
            return not (await provider._run("squeue", "-h", "-j", job, "-o", "%T")).strip()

        await eventually(job_gone, timeout_s=10, message="job cancelled")


async def test_orphan_job_is_cancelled(slurm: Path) -> None:
    config = parse_asr_config(
        {"provider": "slurm", "command": SIMNODE, "slurmConf": str(slurm), "sbatch": ["--time=5"]}
    )
    provider = SlurmProvider(config)
    spec = MachineSpec("clusterodm-1-orphan", MachineSize(1, "s"), "s", "t", "http://x", "", "tagX")
    machine = await provider.create(spec)
    listed = await provider.list_tagged("tagX")
    assert [(m.id, m.name) for m in listed] == [(machine.id, "clusterodm-1-orphan")]
    assert await provider.list_tagged("another") == []
    await provider.destroy(machine)

    async def gone() -> bool:
        return not await provider.list_tagged("tagX")

    await eventually(gone, timeout_s=10, message="job cancelled")
    assert "--comment=tagX" in provider.describe(spec)[0]
