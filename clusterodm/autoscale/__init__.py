"""The autoscaler: machines on demand (``--asr config.json``), on clouds or our own hardware.

``make_provider`` imports a provider's module only when it is used: the cloud SDKs are optional
extras (``pip install clusterodm[aws]``, ``[hetzner]``, ``[digitalocean]``, ``[scaleway]``).
"""

from __future__ import annotations

from clusterodm.autoscale.autoscaler import Autoscaler, vacuum_reason
from clusterodm.autoscale.base import CloudProvider, Machine, MachineSize, MachineSpec
from clusterodm.autoscale.config import AsrConfig, S3Config, load_asr_config, parse_asr_config
from clusterodm.errors import CloudError

__all__ = [
    "AsrConfig",
    "Autoscaler",
    "CloudProvider",
    "Machine",
    "MachineSize",
    "MachineSpec",
    "S3Config",
    "load_asr_config",
    "make_provider",
    "parse_asr_config",
    "vacuum_reason",
]


def make_provider(config: AsrConfig) -> CloudProvider:
    """The provider named by ``config.provider``; ConfigError if its SDK is not installed."""
    name = config.provider
    if name == "local":
        from clusterodm.autoscale.localproc import LocalProvider

        return LocalProvider(config)
    if name == "slurm":
        from clusterodm.autoscale.slurm import SlurmProvider

        return SlurmProvider(config)
    if name == "aws":
        from clusterodm.autoscale.aws import AwsProvider

        return AwsProvider(config)
    if name == "hetzner":
        from clusterodm.autoscale.hetzner import HetznerProvider

        return HetznerProvider(config)
    if name == "digitalocean":
        from clusterodm.autoscale.digitalocean import DigitalOceanProvider

        return DigitalOceanProvider(config)
    if name == "scaleway":
        from clusterodm.autoscale.scaleway import ScalewayProvider

        return ScalewayProvider(config)
    raise CloudError(f"provider {name!r}: not available in this version (see docs/autoscaling.md)")
