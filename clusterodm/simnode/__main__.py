"""Command line: ``python -m clusterodm.simnode`` / ``clusterodm-simnode``, NodeODM's flag names.

Scripts written for ``node index.js --test ...`` keep working: flags take ``-`` or ``_``,
``--test`` is accepted and does nothing (a simnode is always in test mode), and NodeODM flags
that make no sense here are accepted and ignored with a note on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from .config import SimNodeConfig
from .server import SimNode, start_simnode

#: NodeODM flags accepted for compatibility but without effect here (name -> takes a value).
_IGNORED = {
    "config": True,
    "log_level": True,
    "odm_path": True,
    "cleanup_tasks_after": True,
    "cleanup_uploads_after": True,
    "max_runtime": True,
    "s3_endpoint": True,
    "s3_bucket": True,
    "s3_access_key": True,
    "s3_secret_key": True,
    "s3_signature_version": True,
    "s3_acl": True,
    "s3_force_path_style": False,
    "s3_upload_everything": False,
    "s3_ignore_ssl": False,
    "powercycle": False,
    "test_skip_orthophotos": False,
    "test_skip_dems": False,
}
_FIRST_AUTO_PORT = 3000


def _spellings(name: str) -> list[str]:
    return sorted({f"--{name}", f"--{name.replace('_', '-')}"}, key=lambda s: "-" in s[2:])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterodm-simnode", description="A simulated NodeODM node (NodeODM --test)."
    )
    add = parser.add_argument
    add("-p", *_spellings("port"), default="auto", help="port, or 'auto' (first free from 3000)")
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for containers)")
    add("--token", default=None, help="token clients must pass as ?token=")
    add(*_spellings("max_images"), type=int, default=None, dest="max_images")
    add(
        "-q",
        *_spellings("parallel_queue_processing"),
        type=int,
        default=1,
        dest="parallel",
        help="tasks processed at once",
    )
    add(*_spellings("max_concurrency"), type=int, default=None, dest="max_concurrency")
    add("--webhook", default=None, help="URL called when any task ends")
    add("--test", action="store_true", help="accepted for compatibility; always in test mode")
    add(*_spellings("test_seconds"), type=float, default=0.0, dest="test_seconds")
    add(*_spellings("test_fail_tasks"), action="store_true", dest="test_fail_tasks")
    add(*_spellings("test_drop_uploads"), action="store_true", dest="test_drop_uploads")
    add(*_spellings("zip_size"), type=int, default=None, dest="zip_size", help="bytes of all.zip")
    for name, takes_value in _IGNORED.items():
        kind = {"nargs": None} if takes_value else {"action": "store_true"}
        add(*_spellings(name), dest=f"ignored_{name}", help=argparse.SUPPRESS, **kind)
    return parser


def config_from_args(args: argparse.Namespace) -> SimNodeConfig:
    return SimNodeConfig(
        token=args.token or None,
        max_images=args.max_images,
        parallel=max(1, args.parallel),
        test_seconds=args.test_seconds,
        test_fail_tasks=args.test_fail_tasks,
        test_drop_uploads=args.test_drop_uploads,
        webhook=args.webhook,
        zip_size=args.zip_size,
        max_concurrency=args.max_concurrency,
    )


async def _start(args: argparse.Namespace, config: SimNodeConfig) -> SimNode:
    if args.port != "auto":
        return await start_simnode(config, args.host, int(args.port))
    for port in range(_FIRST_AUTO_PORT, 65536):
        try:
            return await start_simnode(config, args.host, port)
        except OSError:
            continue
    raise OSError("no free port")


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly (temporary folder deleted)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = await _start(args, config_from_args(args))
    try:
        print(f"SimNode listening on {node.url}", flush=True)
        await stop.wait()
    finally:
        await node.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    ignored = [
        k.removeprefix("ignored_") for k, v in vars(args).items() if k.startswith("ignored_") and v
    ]
    if ignored:
        print(f"simnode: ignoring NodeODM flags: {', '.join(ignored)}", file=sys.stderr)
    if args.port != "auto" and not str(args.port).isdigit():
        build_parser().error(f"invalid port: {args.port}")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
