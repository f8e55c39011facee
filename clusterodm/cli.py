"""Command line: the original's flags (same names and defaults) plus ``--data-dir``.

Builds one ``Settings`` from defaults < ``--config`` JSON < flags, then hands it to ``app.run``.
No logic beyond parsing lives here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from clusterodm import __version__
from clusterodm.config import LOG_FORMATS, LOG_LEVELS, ConfigError, Settings

# flag (as in the original) -> (Settings field, converter)
_KEYS: dict[str, tuple[str, Any]] = {
    "port": ("port", int),
    "bind": ("bind", str),
    "secure-port": ("secure_port", int),
    "admin-cli-port": ("admin_cli_port", int),
    "admin-web-port": ("admin_web_port", int),
    "admin-pass": ("admin_pass", str),
    "admin-cli-idle-timeout": ("admin_cli_idle_s", float),
    "admin-cli-max-per-address": ("admin_cli_max_per_address", int),
    "log-level": ("log_level", str),
    "log-format": ("log_format", str),
    "cloud-provider": ("cloud_provider", str),
    "token": ("token", str),
    "users": ("users_file", str),
    "lightning-url": ("lightning_url", str),
    "upload-max-speed": ("upload_max_speed", int),
    "downloads-from-s3": ("downloads_from_s3", str),
    "no-splitmerge": ("no_splitmerge", bool),
    "public-address": ("public_address", str),
    "flood-limit": ("flood_limit", int),
    "stale-uploads-timeout": ("stale_uploads_timeout_h", float),
    "ssl-key": ("ssl_key", str),
    "ssl-cert": ("ssl_cert", str),
    "asr": ("asr", str),
    "debug": ("debug", bool),
    "data-dir": ("data_dir", Path),
    "store": ("store", str),
    "max-queue": ("max_queue", int),
    "claim-ttl": ("scale_out.claim_ttl_s", float),
    "failover-grace": ("failover.grace_s", float),
    "failover-retries": ("failover.max_moves", int),
    "keep-images-gb": ("dispatch.keep_images_bytes", lambda gb: int(float(gb) * 1024**3)),
    "no-early-forwarding": ("dispatch.early_forwarding", "negated"),
    "nodes-from": ("nodes_from", lambda v: (v,) if isinstance(v, str) else tuple(map(str, v))),
    "discovery-interval": ("discovery_interval_s", float),
    "dns-server": ("dns_server", str),
    "early-forwarding-idle": ("dispatch.early_forwarding_idle_s", float),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="clusterodm",
        description="A NodeODM-API load balancer and task tracker: one address in front of "
        "many processing nodes.",
    )
    a = p.add_argument
    S = argparse.SUPPRESS
    a("--config", metavar="FILE", help="JSON file with any of these options (same names)")
    a("-p", "--port", type=int, default=S, help="proxy port (default 3000)")
    a("--bind", default=S, help="address to listen on (default 0.0.0.0, all interfaces)")
    a("--secure-port", type=int, default=S, help="HTTPS port when --ssl-key/--ssl-cert are set")
    a("--admin-cli-port", type=int, default=S, help="admin CLI (telnet) port, 0 = off (8080)")
    a("--admin-web-port", type=int, default=S, help="admin web port, 0 = off (default 10000)")
    a("--admin-pass", default=S, help="password for the admin CLI and web page")
    a(
        "--admin-cli-idle-timeout",
        type=float,
        default=S,
        metavar="SECONDS",
        help="close admin CLI sessions idle this long (default 3600)",
    )
    a(
        "--admin-cli-max-per-address",
        type=int,
        default=S,
        help="admin CLI sessions one address may hold; more replace its idlest (default 8)",
    )
    a("--log-level", choices=LOG_LEVELS, default=S, help="logging level (default info)")
    a(
        "--log-format",
        choices=LOG_FORMATS,
        default=S,
        help="text (default) or json: one JSON object per line",
    )
    a("-c", "--cloud-provider", default=S, help="access provider: local | lightning")
    a("--token", default=S, help="token clients must pass (?token=) with the local provider")
    a("--users", metavar="FILE", default=S, help="TOML file of user tokens and their limits")
    a("--lightning-url", metavar="URL", default=S, help="token service of the lightning provider")
    a("--upload-max-speed", type=int, default=S, help="cap on upload speed to nodes, bytes/s")
    a("--downloads-from-s3", default=S, metavar="URL", help="serve downloads from this S3 URL")
    a("--no-splitmerge", action="store_true", default=S, help="refuse split-merge tasks")
    a("--public-address", default=S, metavar="URL", help="this cluster's public http(s) URL")
    a("--flood-limit", type=int, default=S, help="max outstanding task inits per token")
    a(
        "--stale-uploads-timeout",
        type=float,
        default=S,
        metavar="HOURS",
        help="delete uncommitted uploads idle this long (default: only after 48 h)",
    )
    a("--ssl-key", default=S, help="TLS private key file")
    a("--ssl-cert", default=S, help="TLS certificate file")
    a("--asr", default=S, metavar="FILE", help="autoscaler configuration (JSON)")
    a("--debug", action="store_true", default=S, help="disable caches")
    a("--data-dir", default=S, help="where state and staged uploads live (default ./data)")
    a(
        "--store",
        default=S,
        metavar="URL",
        help="shared state store: redis://host:6379/0 (default: SQLite in --data-dir)",
    )
    a(
        "--claim-ttl",
        type=float,
        default=S,
        metavar="SECONDS",
        help="with --store: a dead instance's tasks are taken over after this (10)",
    )
    a("--max-queue", type=int, default=S, help="tasks allowed to wait at the proxy (no bound)")
    a(
        "--failover-grace",
        type=float,
        default=S,
        metavar="SECONDS",
        help="a node offline this long loses its unfinished tasks to other nodes (120)",
    )
    a("--failover-retries", type=int, default=S, help="moves allowed per task (default 3)")
    a(
        "--keep-images-gb",
        type=float,
        default=S,
        metavar="GB",
        help="disk kept for images of running tasks, for failover; 0 = off (default 20)",
    )
    a(
        "--no-early-forwarding",
        action="store_true",
        default=S,
        help="stage a task's images and send them to a node after commit, as the original "
        "does (default: relay each upload to a free node while it arrives)",
    )
    a(
        "--nodes-from",
        action="append",
        default=S,
        metavar="URL",
        help="discover nodes: dns://NAME:PORT (every A/AAAA address is a node) or "
        "dns+srv://_SERVICE._tcp.NAME (SRV hosts and ports); ?token=T for their token; "
        "repeatable",
    )
    a(
        "--discovery-interval",
        type=float,
        default=S,
        metavar="SECONDS",
        help="how often --nodes-from names are resolved again (default 15)",
    )
    a(
        "--dns-server",
        default=S,
        metavar="IP[:PORT]",
        help="DNS server for --nodes-from, e.g. 127.0.0.1:8600 for Consul (default: system's)",
    )
    a(
        "--early-forwarding-idle",
        type=float,
        default=S,
        metavar="SECONDS",
        help="an upload forwarded early that sends nothing for this long gives its node's "
        "slot back; taken again if it resumes (default 30)",
    )
    a("--version", action="version", version=f"ClusterODM {__version__}")
    return p


def _convert(key: str, value: Any) -> Any:
    name, conv = _KEYS[key]
    if value is None:
        return name, None
    if conv is bool or conv == "negated":
        on = value.lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
        return name, on if conv is bool else not on
    try:
        return name, conv(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {value!r} is not a valid value") from e


def load_config_file(path: str) -> dict[str, Any]:
    """Read a ``--config`` JSON file; keys as the flags, with dashes (underscores accepted)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config: {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a JSON object")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("_", "-")
        if key not in _KEYS:
            raise ConfigError(f"--config: unknown key {raw_key!r} in {path}")
        name, converted = _convert(key, value)
        out[name] = converted
    return out


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Flags and config file -> validated Settings (raises ConfigError)."""
    ns = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_path = ns.pop("config", None)
    if config_path:
        values.update(load_config_file(config_path))
    for dest, value in ns.items():
        key = dest.replace("_", "-")
        name, converted = _convert(key, value)
        values[name] = converted
    return _build(values)


def _build(values: dict[str, Any]) -> Settings:
    """Settings from flat values; ``part.field`` names fill the nested settings groups."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if "." in name:
            part, field_name = name.split(".", 1)
            nested.setdefault(part, {})[field_name] = value
        else:
            flat[name] = value
    base = Settings()
    for part, changes in nested.items():
        flat[part] = dataclasses.replace(getattr(base, part), **changes)
    return Settings(**flat).validate()


def main(argv: list[str] | None = None) -> None:
    try:
        settings = parse_settings(argv)
    except ConfigError as e:
        print(f"clusterodm: {e.message}", file=sys.stderr)
        raise SystemExit(2) from None
    from clusterodm.app import run

    run(settings)
