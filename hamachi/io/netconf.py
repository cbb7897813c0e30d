"""Addresses, routes and MTU on an interface, through iproute2."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable


class NetconfError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0 and "File exists" not in r.stderr:
        raise NetconfError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def configure(name: str, mtu: int, addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
              routes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
    _ip("link", "set", "dev", name, "mtu", str(mtu))
    for a in addresses:
        _ip("-6" if a.version == 6 else "-4", "addr", "add", str(a), "dev", name, *(
            ["nodad"] if a.version == 6 else []))
    _ip("link", "set", "dev", name, "up")
    for net in routes:
        _ip("-6" if net.version == 6 else "-4", "route", "replace", str(net), "dev", name)
