"""Results to stdout (rich table or JSON with schema_version); logs to stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape

SCHEMA_VERSION = 1

# Views are laid out for 80 columns; not a terminal (pipes, scripts): $COLUMNS, else 80.
out = Console(highlight=False, soft_wrap=False,
              width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "") or 0) or 80)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def emit(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], Any]) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, **data}, indent=2, default=str) + "\n")
        sys.stdout.flush()
    else:
        result = render(data)
        if isinstance(result, str):
            # Plain text may contain brackets ([[relay]]) and commands to copy: never broken up.
            out.print(result, markup=False, soft_wrap=True)
        elif result is not None:
            out.print(result)


# With --json, refusals are JSON too: fail() collects the lines and refusal() prints
# {"schema_version": 1, "error": first line, "errors": [...], "code": exit code} on stdout.
json_errors = False
_pending: list[str] = []


def fail(line: str, prefix: bool = True) -> None:
    if json_errors:
        _pending.append(line)
    elif prefix:
        err.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)
    else:
        err.print(line, markup=False, highlight=False)


def refusal(code: int) -> None:
    """Called on a non-zero exit: in JSON mode, the collected error lines as one JSON object."""
    if json_errors and code:
        lines = _pending or ["failed"]
        sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, "error": lines[0], "errors": lines,
                                     "code": int(code)}, indent=2) + "\n")
        sys.stdout.flush()
        _pending.clear()


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
