"""AsrConfig: the autoscaler's settings, read from the ``--asr`` JSON file.

The original's config files work as they are: each provider starts from the original's defaults
and the file overrides them key by key. Values still set to "CHANGEME!" (the original's
placeholder) or missing where required are refused with a message naming the key; so are wrong
types. Keys the original did not have (``clusterTag``, the timing knobs, ``endpoint``) are ours.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterodm.autoscale.base import MachineSize
from clusterodm.config import ConfigError

CHANGEME = "CHANGEME!"
PROVIDERS = ("aws", "digitalocean", "hetzner", "scaleway", "local", "slurm")
UNLIMITED_IMAGES = 1_000_000_000

_REGISTRY = {"username": "", "password": "", "url": ""}
_COMMON: dict[str, Any] = {
    "maxRuntime": -1,
    "maxUploadTime": -1,
    "createRetries": 1,
    "minImages": -1,
    "addSwap": 1,
    "dockerImage": "opendronemap/nodeodm",
    "dockerGpu": False,
    "dockerRegistry": _REGISTRY,
    "nodeSetupCmd": "",
    "tags": ["clusterodm"],
    # ours:
    "clusterTag": "",
    "onlineTimeout": 900,  # boot, install Docker, pull NodeODM: minutes on a cloud
    "pollInterval": 5,
    "vacuumInterval": 600,  # original: every 10 minutes
    "teardownDelay": 10,  # original: 10 s after the /commit webhook
    "createRetryDelay": 1,  # original: 1 s while rotating regions, then 10 s * n
}
_S3_KEYS = {"accessKey": CHANGEME, "secretKey": CHANGEME, "endpoint": CHANGEME, "bucket": CHANGEME}

DEFAULTS: dict[str, dict[str, Any]] = {
    "aws": {
        "accessKey": CHANGEME,
        "secretKey": CHANGEME,
        "s3": {"endpoint": CHANGEME, "bucket": CHANGEME, "acl": "public-read"},
        "vpc": "",
        "subnet": "",
        "usePrivateAddress": False,
        "assignPrivateAddressOnly": False,
        "securityGroup": CHANGEME,
        "instanceLimit": -1,
        "region": "us-west-2",
        "zone": "",
        "monitoring": False,
        "ami": "ami-07b4f3c02c7f83d59",
        "spot": False,
        "imageSizeMapping": [
            {"maxImages": 5, "slug": "t2.micro", "spotPrice": 0.1, "storage": 10},
            {"maxImages": 50, "slug": "t2.medium", "spotPrice": 0.1, "storage": 100},
        ],
        "dockerDataDirMountPath": "",
        "iamrole": "",
    },
    "digitalocean": {
        "accessToken": CHANGEME,
        "s3": {**_S3_KEYS, "ignoreSSL": False},
        "dropletsLimit": -1,
        "region": "nyc3",
        "monitoring": True,
        "image": "ubuntu-22-04-x64",
        "snapshot": False,
        "sshKey": {"fingerprint": "", "path": ""},
        "imageSizeMapping": [
            {"maxImages": 5, "slug": "s-1vcpu-1gb"},
            {"maxImages": 50, "slug": "s-4vcpu-8gb"},
        ],
    },
    "hetzner": {
        "apiToken": CHANGEME,
        "s3": {**_S3_KEYS, "ignoreSSL": False},
        "machinesLimit": -1,
        "location": "fsn1",
        "image": "ubuntu-22.04",
        "snapshot": False,
        "sshKey": {"fingerprint": "", "path": ""},
        "imageSizeMapping": [{"maxImages": 5, "slug": "cx22"}, {"maxImages": 50, "slug": "cx32"}],
    },
    "scaleway": {
        "organization": CHANGEME,
        "secretToken": CHANGEME,
        "accessKey": "",
        "project": "",  # ours: the organization's default project unless set
        "s3": {**_S3_KEYS, "ignoreSSL": False},
        "machinesLimit": -1,
        "region": "fr-par-1",
        "image": "ubuntu_jammy",
        "imageSizeMapping": [
            {"maxImages": 5, "slug": "GP1-XS"},
            {"maxImages": 50, "slug": "GP1-S"},
        ],
    },
    "local": {
        "command": CHANGEME,
        "host": "127.0.0.1",
        "machinesLimit": 1,
        "onlineTimeout": 30,
        "pollInterval": 0.5,
        "imageSizeMapping": [{"maxImages": UNLIMITED_IMAGES, "slug": "local"}],
    },
    "slurm": {
        "command": CHANGEME,
        "sbatch": [],
        "portRange": [30000, 40000],
        "machinesLimit": 1,
        "onlineTimeout": 600,  # a job may wait in the queue
        "pollInterval": 2,
        "commandTimeout": 30,
        "imageSizeMapping": [{"maxImages": UNLIMITED_IMAGES, "slug": "slurm"}],
    },
}

REQUIRED: dict[str, tuple[str, ...]] = {
    "aws": ("accessKey", "secretKey", "s3.endpoint", "s3.bucket", "s3.acl", "securityGroup"),
    "digitalocean": ("accessToken",),
    "hetzner": ("apiToken", "image"),
    "scaleway": ("organization", "secretToken"),
    "local": ("command",),
    "slurm": ("command",),
}
S3_REQUIRED = ("s3.accessKey", "s3.secretKey", "s3.endpoint", "s3.bucket")
LIMIT_KEYS = {"aws": "instanceLimit", "digitalocean": "dropletsLimit"}
REGION_KEYS = {"hetzner": "location"}
SCALEWAY_ZONES = {"par1": "fr-par-1", "ams1": "nl-ams-1"}  # the original's docker-machine names
_ZONE = re.compile(r"^[a-z]{2}-[a-z]{3}-[1-9]$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
SECRET_KEYS = (
    "accessKey",
    "secretKey",
    "accessToken",
    "apiToken",
    "secretToken",
    "s3.accessKey",
    "s3.secretKey",
    "dockerRegistry.password",
)


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where nodes put their results (``--s3_*`` flags of NodeODM)."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    acl: str = "public-read"
    ignore_ssl: bool = False

    @property
    def endpoint_url(self) -> str:
        if self.endpoint.startswith(("http://", "https://")):
            return self.endpoint
        return f"https://{self.endpoint}"

    @property
    def downloads_base_url(self) -> str:
        """Public address of the bucket, as the original builds it (``https://bucket.endpoint``)."""
        if self.endpoint.startswith(("http://", "https://")):
            return f"{self.endpoint.rstrip('/')}/{self.bucket}"
        return f"https://{self.bucket}.{self.endpoint}"

    @property
    def public(self) -> bool:
        return self.acl in ("", "public-read")


@dataclass(frozen=True, slots=True)
class RegistryLogin:
    url: str
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class AsrConfig:
    """One autoscaler's settings. ``raw`` keeps every key, for provider-specific ones."""

    provider: str
    raw: dict[str, Any]
    sizes: tuple[MachineSize, ...]
    regions: tuple[str, ...]
    min_images: int = -1
    machines_limit: int = -1
    create_retries: int = 1
    max_runtime_s: float = -1
    max_upload_time_s: float = -1
    docker_image: str = "opendronemap/nodeodm"
    docker_gpu: bool = False
    registry: RegistryLogin | None = None
    node_setup_cmd: str = ""
    add_swap: float = 1.0
    s3: S3Config | None = None
    cluster_tag: str = ""
    online_timeout_s: float = 900.0
    poll_interval_s: float = 5.0
    vacuum_interval_s: float = 600.0
    teardown_delay_s: float = 10.0
    retry_delay_s: float = 1.0
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def get(self, path: str, default: Any = None) -> Any:
        return _get(self.raw, path, default)

    def size_for(self, images: int) -> MachineSize | None:
        """The first size whose maxImages fits; None below ``minImages`` or above every size."""
        if self.min_images != -1 and images < self.min_images:
            return None
        for size in self.sizes:
            if size.max_images >= images:
                return size
        return None

    def region_for(self, attempt: int) -> str:
        """Regions are tried in turn across attempts (1-based)."""
        return self.regions[(attempt - 1) % len(self.regions)]

    def retry_sleep_s(self, attempt: int) -> float:
        """Short pauses while other regions remain untried, then growing ones (capped)."""
        untried = len(self.regions)
        if attempt <= untried:
            return self.retry_delay_s
        return min(60.0, self.retry_delay_s * 10 * (attempt - untried))

    def mask(self, text: str) -> str:
        """``text`` with every secret of this config replaced by ``***``."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def load_asr_config(path: str | Path) -> AsrConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--asr: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"--asr: {path} is not valid JSON: {e}") from None
    return parse_asr_config(data)


def parse_asr_config(data: Any) -> AsrConfig:
    if not isinstance(data, dict):
        raise ConfigError("--asr: the configuration must be a JSON object")
    provider = data.get("provider")
    if not provider:
        raise ConfigError("--asr: your configuration must specify a provider key")
    if provider not in PROVIDERS:
        raise ConfigError(
            f"--asr: provider: unknown provider {provider!r} ({', '.join(PROVIDERS)})"
        )
    raw = _merge(copy.deepcopy({**_COMMON, **DEFAULTS[provider]}), data)
    required = REQUIRED[provider]
    if provider in ("digitalocean", "hetzner", "scaleway") or (
        provider in ("local", "slurm") and raw.get("s3")
    ):
        required += S3_REQUIRED
    for key in required:
        value = _get(raw, key, None)
        if value is None or value == CHANGEME or value == "":
            raise ConfigError(f"--asr: you need to set {key} in your configuration")
    for key, value in _walk(raw):
        if value == CHANGEME:
            raise ConfigError(f"--asr: you need to set {key} in your configuration")

    sizes = _sizes(raw.get("imageSizeMapping"))
    region_key = REGION_KEYS.get(provider, "region")
    regions = raw.get(region_key)
    if isinstance(regions, str):
        regions = [regions]
    if provider in ("local", "slurm"):
        regions = regions if isinstance(regions, list) and regions else ["local"]
    if not isinstance(regions, list) or not regions or not all(isinstance(r, str) for r in regions):
        raise ConfigError(f"--asr: {region_key} must be a name or a list of names")
    if provider == "scaleway":
        regions = _scaleway_checks(raw, regions)

    limit = raw.get(LIMIT_KEYS.get(provider, "machinesLimit"), -1)
    if "machinesLimit" in data:
        limit = data["machinesLimit"]
    reg = raw.get("dockerRegistry") or {}
    if not isinstance(reg, dict):
        raise ConfigError("--asr: dockerRegistry must be an object")
    registry = None
    if reg.get("url"):
        registry = RegistryLogin(
            str(reg["url"]), str(reg.get("username", "")), str(reg.get("password", ""))
        )

    s3 = _s3(provider, raw)
    secrets = tuple(
        str(v) for k in SECRET_KEYS if (v := _get(raw, k, "")) and isinstance(v, str) and len(v) > 2
    )
    return AsrConfig(
        provider=provider,
        raw=raw,
        sizes=sizes,
        regions=tuple(regions),
        min_images=_int(raw, "minImages"),
        machines_limit=_int(raw, LIMIT_KEYS.get(provider, "machinesLimit"), value=limit),
        create_retries=max(1, _int(raw, "createRetries")),
        max_runtime_s=_num(raw, "maxRuntime"),
        max_upload_time_s=_num(raw, "maxUploadTime"),
        docker_image=_str(raw, "dockerImage"),
        docker_gpu=bool(raw.get("dockerGpu")),
        registry=registry,
        node_setup_cmd=_str(raw, "nodeSetupCmd"),
        add_swap=_num(raw, "addSwap") if raw.get("addSwap") else 0.0,
        s3=s3,
        cluster_tag=_str(raw, "clusterTag"),
        online_timeout_s=_positive(raw, "onlineTimeout"),
        poll_interval_s=_positive(raw, "pollInterval"),
        vacuum_interval_s=_positive(raw, "vacuumInterval"),
        teardown_delay_s=max(0.0, _num(raw, "teardownDelay")),
        retry_delay_s=max(0.0, _num(raw, "createRetryDelay")),
        secrets=secrets,
    )


def _scaleway_checks(raw: dict[str, Any], zones: list[str]) -> list[str]:
    """Zones in Scaleway's form (the original's ``par1``/``ams1`` translated); ids are UUIDs."""
    zones = [SCALEWAY_ZONES.get(z, z) for z in zones]
    for zone in zones:
        if not _ZONE.match(zone):
            raise ConfigError(f"--asr: region: {zone!r} is not a Scaleway zone (e.g. fr-par-1)")
    for key in ("organization", "secretToken", "project"):
        value = raw.get(key)
        if value and (not isinstance(value, str) or not _UUID.match(value)):
            raise ConfigError(f"--asr: {key} must be a Scaleway id (a UUID)")
    return zones


def _s3(provider: str, raw: dict[str, Any]) -> S3Config | None:
    s3 = raw.get("s3")
    if not s3:
        return None
    if not isinstance(s3, dict):
        raise ConfigError("--asr: s3 must be an object")
    if provider == "aws":  # the original's AWS config keeps its keys at the top level
        access, secret = raw.get("accessKey", ""), raw.get("secretKey", "")
    else:
        access, secret = s3.get("accessKey", ""), s3.get("secretKey", "")
    return S3Config(
        endpoint=str(s3.get("endpoint", "")),
        bucket=str(s3.get("bucket", "")),
        access_key=str(access),
        secret_key=str(secret),
        acl=str(s3.get("acl", "public-read") or "public-read"),
        ignore_ssl=bool(s3.get("ignoreSSL", False)),
    )


def _sizes(mapping: Any) -> tuple[MachineSize, ...]:
    if not isinstance(mapping, list) or not mapping:
        raise ConfigError("--asr: invalid config key imageSizeMapping (array expected)")
    sizes = []
    for i, row in enumerate(mapping):
        where = f"imageSizeMapping[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(f"--asr: {where} must be an object")
        max_images, slug = row.get("maxImages"), row.get("slug")
        if not isinstance(max_images, int) or isinstance(max_images, bool) or max_images < 1:
            raise ConfigError(f"--asr: {where}.maxImages must be a positive integer")
        if not isinstance(slug, str) or not slug:
            raise ConfigError(f"--asr: {where}.slug must be a machine size name")
        storage, spot = row.get("storage"), row.get("spotPrice")
        if storage is not None and (not isinstance(storage, int | float) or storage <= 0):
            raise ConfigError(f"--asr: {where}.storage must be a positive number (GB)")
        if spot is not None and (not isinstance(spot, int | float) or spot <= 0):
            raise ConfigError(f"--asr: {where}.spotPrice must be a positive number")
        sizes.append(
            MachineSize(
                max_images,
                slug,
                int(storage) if storage is not None else None,
                float(spot) if spot is not None else None,
            )
        )
    return tuple(sorted(sizes, key=lambda s: s.max_images))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Override key by key; nested objects (s3, dockerRegistry, sshKey) merge one level down."""
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return base


def _get(data: dict[str, Any], path: str, default: Any) -> Any:
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _walk(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_walk(v, key + "."))
        else:
            out.append((key, v))
    return out


def _num(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"--asr: {key} must be a number")
    return float(value)


def _positive(raw: dict[str, Any], key: str) -> float:
    value = _num(raw, key)
    if value <= 0:
        raise ConfigError(f"--asr: {key} must be more than 0")
    return value


def _int(raw: dict[str, Any], key: str, value: Any = None) -> int:
    value = raw.get(key) if value is None else value
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"--asr: {key} must be an integer")
    return value


def _str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"--asr: {key} must be a string")
    return value
