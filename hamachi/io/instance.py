"""Startup guards shared by the daemons: one daemon per config, and ports that are taken.

`InstanceLock` holds an flock on `<api socket>.lock` for the daemon's lifetime and writes
its PID there, so a second daemon on the same config (same socket, same TUN device) says
who holds it instead of failing half-way. The lock also tells a daemon whether the API
socket on disk is its own: only the holder removes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from hamachi.exitcodes import ExitCode, StartupError


class InstanceLock:
    def __init__(self, api_socket: Path, role: str):
        self.path = Path(str(api_socket) + ".lock")
        self.role = role
        self.fd: int | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.read(fd, 32).decode().strip() or "0")
            os.close(fd)
            holder = f"PID {pid}" if "pid" in locals() and pid else "another process"
            raise StartupError(f"another hamachi {self.role} ({holder}) is already running with this config "
                               f"(lock {self.path}); stop it first", ExitCode.IN_USE) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None


@contextlib.contextmanager
def binding(what: str, key: str, port: int | str) -> Iterator[None]:
    """Turn "address already in use" while binding into one line naming the port and its config key."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{what} port {port} is already in use by another program; stop it or set "
                               f"{key} to a free port", ExitCode.IN_USE) from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"{what} port {port}: permission denied (ports below 1024 need root); "
                               f"set {key} to another port", ExitCode.NO_PRIVILEGE) from None
        raise
