"""Checks for CAP_NET_ADMIN, which TUN/TAP devices and addresses need."""

from __future__ import annotations

CAP_NET_ADMIN = 12


class PrivilegeError(Exception):
    """The process lacks a capability it needs; the CLI exits 5."""


def has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    except OSError:
        pass
    return False


def require_net_admin(what: str) -> None:
    if not has_net_admin():
        raise PrivilegeError(
            f"{what} needs CAP_NET_ADMIN: run as root, or grant it with "
            "`setcap cap_net_admin+ep` on the Python interpreter, or `AmbientCapabilities=CAP_NET_ADMIN` in systemd"
        )
