"""Composition roots: each role wires config, io and proto together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hamachi import config as C

T = TypeVar("T")


def reread_config(load: Callable[[Path], T], path: Path, log: logging.Logger) -> T | None:
    """SIGHUP: the config read again, or None (each problem logged) when it no longer loads."""
    try:
        return load(path)
    except C.ConfigError as exc:
        for line in exc.problems:
            log.error("reload refused: %s", line)
        return None
