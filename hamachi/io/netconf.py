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


def local_ipv4_addresses(exclude: set[str]) -> list[str]:
    """IPv4 addresses of this host's interfaces (LAN candidates), skipping loopback and `exclude` devices."""
    import json

    r = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True)
    if r.returncode != 0:
        return []
    out = []
    for link in json.loads(r.stdout or "[]"):
        if link.get("ifname") in exclude or "LOOPBACK" in link.get("flags", []):
            continue
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                out.append(a["local"])
    return out
