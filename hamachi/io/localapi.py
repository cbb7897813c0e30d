"""Local API: newline-delimited JSON over a Unix socket that only root may open.

Request:  {"verb": "status", "args": {...}}
Response: {"ok": true, "result": ...} or {"ok": false, "error": "one line", "code": N}

Handlers get the caller's credentials (SO_PEERCRED) as args["_caller"], e.g.
"uid 0 pid 4242", for the audit log; a client cannot supply that key itself.

The daemon side is an asyncio server; the CLI side is a tiny blocking client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ApiError(Exception):
    """An error the daemon reports to the CLI as one line, with an exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class DaemonNotRunning(Exception):
    pass


def group_id(group: str) -> int:
    """The gid of a group name (or number); StartupError-ready ValueError if there is none."""
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ValueError(f"api_group: there is no group {group!r} on this machine (create it with "
                         f"`groupadd {group}`, or leave api_group unset for a root-only socket)") from None


async def serve(path: Path, handlers: dict[str, Handler], group: str = "",
                read_verbs: frozenset[str] = frozenset()) -> asyncio.AbstractServer:
    """Serve the API on `path`: 0600 (root only), or 0660 with `group` (its members may call only
    `read_verbs`; every other verb needs root or the daemon's own user)."""
    gid = group_id(group) if group else None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    trusted = {0, os.geteuid()}

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = peer_credentials(writer.get_extra_info("socket"))
        uid = caller.split()[1]
        allowed = None if gid is None or (uid.isdigit() and int(uid) in trusted) else read_verbs
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                reply = await _dispatch(line, handlers, caller, allowed)
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o177)  # socket file is created 0600: root only
    try:
        server = await asyncio.start_unix_server(on_conn, path=str(path), limit=MAX_REQUEST)
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
        # The group must reach the socket: others may pass through the directory (never list it).
        os.chmod(path.parent, path.parent.stat().st_mode & 0o7777 | 0o011)
    return server


def peer_credentials(sock: socket.socket | None) -> str:
    """Who is on the other end of a Unix socket: "uid U pid P" (Linux SO_PEERCRED)."""
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except (AttributeError, OSError):
        return "uid ? pid ?"
    return f"uid {uid} pid {pid}"


async def _dispatch(line: bytes, handlers: dict[str, Handler], caller: str = "",
                    allowed: frozenset[str] | None = None) -> dict[str, Any]:
    try:
        req = json.loads(line)
        verb = req["verb"]
        args = req.get("args") or {}
        if not isinstance(args, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": "malformed request", "code": 2}
    args["_caller"] = caller
    handler = handlers.get(verb)
    if handler is None:
        return {"ok": False, "error": f"unknown verb {verb!r}", "code": 2}
    if allowed is not None and verb not in allowed:
        return {"ok": False, "code": 5, "error": f"{verb!r} needs root: the API group may only read "
                                                  f"({', '.join(sorted(allowed))})"}
    try:
        return {"ok": True, "result": await handler(args)}
    except ApiError as exc:
        return {"ok": False, "error": str(exc), "code": exc.code}


def call(path: Path, verb: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """Blocking client used by the CLI. Raises DaemonNotRunning or ApiError."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(f"no daemon is listening on {path}") from exc
        s.sendall(json.dumps({"verb": verb, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise DaemonNotRunning(f"the daemon on {path} closed the connection")
            buf += chunk
    finally:
        s.close()
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ApiError(reply.get("error", "unknown error"), reply.get("code", 1))
    return reply.get("result")
