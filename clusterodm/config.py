"""Settings: every knob of the cluster, defaults in one place, validated once.

Built by ``cli.py`` from defaults < ``--config`` JSON < flags. Components get their own slice.
Imports only ``errors`` of this package (and yarl, to read ``--nodes-from`` URLs).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from clusterodm.errors import InvalidRequest

LOG_LEVELS = ("error", "warn", "info", "verbose", "debug", "silly")
LOG_FORMATS = ("text", "json")
STORE_SCHEMES = ("redis://", "rediss://")


class ConfigError(InvalidRequest):
    """A setting is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Outbound call limits, in seconds, by kind of call."""

    info_s: float = 10.0  # health refresh of /info (original: 10 s)
    api_s: float = 30.0  # small JSON calls forwarded to a node
    connect_s: float = 10.0  # connecting to a node for any call
    stream_read_s: float = 300.0  # idle read on streamed downloads/uploads (no total)
    poll_s: float = 5.0  # a task poll or a node's /task/list; then the last known state


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How a committed task is forwarded to a node."""

    parallel_uploads: int = 20  # original: up to 20 parallel upload requests
    upload_retries: int = 5  # per file
    attempts: int = 5  # whole dispatch attempts, switching node when possible
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    queue_poll_s: float = 2.0  # while tasks wait: how often to look for a free slot
    keep_images_bytes: int = 20 * 1024**3  # staged images kept for failover, all tasks; 0 = off
    early_forwarding: bool = True  # send images on to a free node while the client uploads
    #: an upload forwarded early that stays quiet this long gives its node's slot back
    #: (taken again if it resumes and the slot is still free)
    early_forwarding_idle_s: float = 30.0


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """When a task moves off its node."""

    grace_s: float = 120.0  # a node offline this long loses its unfinished tasks
    check_s: float = 10.0  # how often kept tasks are checked on their nodes
    #: a node refusing connections this long (two checks at least this far apart) is gone:
    #: its tasks move at once, without waiting for ``grace_s`` (kept for timeouts)
    refused_s: float = 5.0
    max_moves: int = 3  # a task moved this many times and failing again is FAILED


@dataclass(frozen=True, slots=True)
class ScaleOutSettings:
    """Coordination of several instances on one shared store (``--store redis://...``)."""

    claim_ttl_s: float = 10.0  # a dead instance's tasks and leadership lapse after this
    scan_s: float = 2.0  # node list and task table re-read, lapsed task claims taken over

    @property
    def renew_s(self) -> float:
        """Claims are renewed at a third of their expiry: two renewals may fail in between."""
        return self.claim_ttl_s / 3


@dataclass(frozen=True, slots=True)
class LightningSettings:
    """Calls to the external token service of ``--cloud-provider lightning``."""

    timeout_s: float = 15.0  # original: 15 s per call
    cache_s: float = 15 * 60.0  # original: a validation answer is kept 15 minutes
    validate_attempts: int = 4  # original: 10, sleeping 2 s * i between (too long for a request)
    finished_attempts: int = 10  # original: 10
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0


DISCOVERY_SCHEMES = ("dns", "dns+srv")
_DNS_NAME_RE = re.compile(r"(?=.{1,253}\.?\Z)[a-z0-9_][a-z0-9_-]{0,62}(?:\.[a-z0-9_-]{1,63})*\.?")


@dataclass(frozen=True, slots=True)
class DiscoverySource:
    """One ``--nodes-from`` URL: ``dns://name:port`` (A and AAAA records, one port for all) or
    ``dns+srv://_service._tcp.name`` (hosts and ports from SRV records); ``?token=`` is the
    token of the nodes it finds. ``label`` names it in logs and on nodes, without the token."""

    kind: str  # "dns" or "dns+srv"
    name: str
    port: int | None
    token: str = field(default="", repr=False)

    @property
    def label(self) -> str:
        return str(URL.build(scheme=self.kind, host=self.name, port=self.port))

    @classmethod
    def parse(cls, text: str) -> DiscoverySource:
        """Strictly: a known scheme, a DNS name, a port only for ``dns://``, only ``token``."""
        try:
            url = URL(text.strip())
            port = url.explicit_port
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--nodes-from: {text!r} is not a URL") from e
        if url.scheme not in DISCOVERY_SCHEMES:
            raise ConfigError(f"--nodes-from: {url.scheme!r} is not dns:// or dns+srv://")
        name = (url.raw_host or "").lower()
        if not _DNS_NAME_RE.fullmatch(name) or _is_ip(name):
            raise ConfigError(f"--nodes-from: {name!r} is not a DNS name")
        if url.user or url.password or url.fragment or url.path not in ("", "/"):
            raise ConfigError("--nodes-from: only scheme, name, port and ?token= are allowed")
        extra = set(url.query) - {"token"}
        if extra:
            raise ConfigError(f"--nodes-from: unknown parameter {sorted(extra)[0]!r}")
        if url.scheme == "dns" and port is None:
            raise ConfigError(f"--nodes-from: {text!r} needs a port (dns://name:3000)")
        if url.scheme == "dns+srv" and port is not None:
            raise ConfigError("--nodes-from: dns+srv:// takes its ports from the SRV records")
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"--nodes-from: {port} is not a port number")
        return cls(url.scheme, name, port, url.query.get("token", ""))  # "name." = no search list


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_dns_server(text: str) -> tuple[str, int]:
    """``--dns-server``: ``IP`` or ``IP:PORT`` (``[IPv6]:PORT``); port 53 by default."""
    host, port = text.strip(), 53
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"--dns-server: {text!r} is not IP[:PORT]")
        host, port_text = inner, rest[1:]
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    else:
        port_text = ""
    if port_text:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"--dns-server: {port_text!r} is not a port number")
        port = int(port_text)
    if not _is_ip(host):
        raise ConfigError(f"--dns-server: {host!r} is not an IP address")
    return host, port


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings of one cluster process."""

    port: int = 3000
    bind: str = "0.0.0.0"
    secure_port: int | None = None
    admin_cli_port: int = 8080
    admin_web_port: int = 10000
    admin_pass: str = ""
    admin_cli_idle_s: float = 3600.0  # an admin CLI session silent this long is closed
    admin_cli_max_per_address: int = 8  # admin CLI sessions from one address at once
    log_level: str = "info"
    log_format: str = "text"  # "json": one object per line (Loki, ELK)
    cloud_provider: str = "local"
    token: str = ""
    users_file: str = ""  # TOML users file; replaces --token (per-user tokens and limits)
    users_reload_s: float = 2.0  # how often the users file is checked for changes
    lightning_url: str = "https://webodm.net/r"  # the lightning provider's token service
    lightning: LightningSettings = field(default_factory=LightningSettings)
    auth_fail_limit: int = 10  # failed tokens from one IP within the window, then 429
    auth_fail_window_s: float = 600.0
    upload_max_speed: int | None = None  # bytes/s towards nodes, all uploads together
    downloads_from_s3: str = ""
    no_splitmerge: bool = False
    public_address: str = ""
    flood_limit: int | None = None
    stale_uploads_timeout_h: float = 0.0  # 0 = only the 48 h rule
    ssl_key: str = ""
    ssl_cert: str = ""
    asr: str = ""
    debug: bool = False
    data_dir: Path = Path("data")
    store: str = ""  # "" = SQLite in data_dir; a redis:// or rediss:// URL = shared state in Redis
    refresh_interval_s: float = 60.0  # original: every 60 s
    online_window_s: float = 120.0  # online if last good refresh is younger than this
    stale_uploads_max_age_s: float = 48 * 3600.0
    options_cache_s: float = 3600.0
    task_watch_s: float = 5.0  # how often nodes are asked about tasks sent to them (log events)
    timeouts: Timeouts = field(default_factory=Timeouts)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    scale_out: ScaleOutSettings = field(default_factory=ScaleOutSettings)
    max_queue: int | None = None  # tasks waiting at the proxy; None = no bound
    nodes_from: tuple[str, ...] = ()  # --nodes-from URLs (nodes/discovery.py)
    discovery_interval_s: float = 15.0  # how often --nodes-from names are resolved again
    dns_server: str = ""  # "" = the system's resolvers; IP[:PORT] asks that server instead
    dns_timeout_s: float = 5.0  # one discovery lookup (A and AAAA, or SRV and its targets)

    def validate(self) -> Settings:
        """Check cross-field rules; raise ConfigError naming the key."""
        for name in ("port", "admin_cli_port", "admin_web_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{_flag(name)}: {value} is not a port number")
        if self.secure_port is not None and not 0 <= self.secure_port <= 65535:
            raise ConfigError(f"--secure-port: {self.secure_port} is not a port number")
        if not 0 < self.admin_cli_idle_s <= 7 * 86400:
            raise ConfigError("--admin-cli-idle-timeout must be from 1 second to 7 days")
        if not 1 <= self.admin_cli_max_per_address <= 64:
            raise ConfigError("--admin-cli-max-per-address must be from 1 to 64")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"--log-level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"--log-format: {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
            )
        if bool(self.ssl_key) != bool(self.ssl_cert):
            raise ConfigError("--ssl-key and --ssl-cert must be given together")
        if self.secure_port is not None and not self.ssl_key:
            raise ConfigError("--secure-port needs --ssl-key and --ssl-cert")
        if self.upload_max_speed is not None and self.upload_max_speed <= 0:
            raise ConfigError("--upload-max-speed must be a positive number of bytes per second")
        if self.max_queue is not None and self.max_queue < 0:
            raise ConfigError("--max-queue must not be negative")
        if self.failover.grace_s < 0 or self.failover.max_moves < 0:
            raise ConfigError("--failover-grace and --failover-retries must not be negative")
        if self.scale_out.claim_ttl_s <= 0 or self.scale_out.scan_s <= 0:
            raise ConfigError("--claim-ttl must be a positive number of seconds")
        if not 0.1 <= self.dispatch.early_forwarding_idle_s <= 24 * 3600.0:
            raise ConfigError("--early-forwarding-idle must be from 0.1 to 86400 seconds")
        if self.dispatch.keep_images_bytes < 0:
            raise ConfigError("--keep-images-gb must not be negative")
        if self.flood_limit is not None and self.flood_limit < 0:
            raise ConfigError("--flood-limit must not be negative")
        if self.cloud_provider not in ("local", "lightning"):
            raise ConfigError(f"--cloud-provider: unknown provider {self.cloud_provider!r}")
        if self.users_file and (self.token or self.cloud_provider != "local"):
            raise ConfigError("--users replaces --token and the lightning provider; give one")
        if self.auth_fail_limit < 1:
            raise ConfigError("auth_fail_limit must be at least 1")
        if self.store and not self.store.startswith(STORE_SCHEMES):
            raise ConfigError(
                f"--store: {_redact(self.store)!r} is not a redis:// or rediss:// URL "
                "(leave it empty for SQLite in --data-dir)"
            )
        self.discovery_sources()
        if self.dns_server:
            parse_dns_server(self.dns_server)
        interval = self.discovery_interval_s
        if not isinstance(interval, int | float) or not 0 < interval <= 86400:
            raise ConfigError("--discovery-interval must be between 0 and 86400 seconds")
        if self.public_address and not self.public_address.startswith(("http://", "https://")):
            raise ConfigError("--public-address must start with http:// or https://")
        return self

    def discovery_sources(self) -> list[DiscoverySource]:
        """``--nodes-from`` parsed (raises ConfigError); a source given twice counts once."""
        out: list[DiscoverySource] = []
        for text in self.nodes_from or ():
            source = DiscoverySource.parse(text)
            if source.label in {s.label for s in out}:
                raise ConfigError(f"--nodes-from: {source.label} is given twice")
            out.append(source)
        return out

    @property
    def ssl(self) -> bool:
        return bool(self.ssl_key and self.ssl_cert)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _redact(url: str) -> str:
    """A URL as it may appear in an error: anything between ``//`` and ``@`` (a password) hidden."""
    head, sep, rest = url.partition("//")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{head}//***@{rest.split('@', 1)[1]}"
    return url
