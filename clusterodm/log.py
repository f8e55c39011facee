"""Logging set-up: the original's level names mapped to stdlib levels, one line per event."""

from __future__ import annotations

import logging
import sys

LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "verbose": logging.INFO - 5,
    "debug": logging.DEBUG,
    "silly": logging.DEBUG - 5,
}


def setup(level: str = "info") -> None:
    logging.addLevelName(LEVELS["verbose"], "VERBOSE")
    logging.addLevelName(LEVELS["silly"], "SILLY")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
