"""Addresses, routes and MTU on an interface, through iproute2."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable


class NetconfError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0 and "File exists" not in r.stderr:
        raise NetconfError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def configure(name: str, mtu: int, addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
              routes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (), *, lan: bool = False,
              multicast_route: bool = False, broadcast_route: bool = False) -> None:
    """Addresses, routes, MTU; `lan` makes the interface usable like a LAN segment by games:
    IPv4 addresses get their directed broadcast (`brd +`), the device no IPv6 link-local address
    (so ff02::1 and other link-scope multicast leave from the overlay address, which peers accept),
    and optionally 224.0.0.0/4 and 255.255.255.255 are routed to it (see README)."""
    _ip("link", "set", "dev", name, "mtu", str(mtu))
    if lan:
        _ip("link", "set", "dev", name, "addrgenmode", "none")
    for a in addresses:
        extra = ["nodad"] if a.version == 6 else (["broadcast", "+"] if lan and a.network.prefixlen <= 30 else [])
        _ip("-6" if a.version == 6 else "-4", "addr", "replace", str(a), "dev", name, *extra)
    _ip("link", "set", "dev", name, "up")
    if lan:
        _ip("-6", "addr", "flush", "dev", name, "scope", "link")
        if multicast_route:
            _ip("-4", "route", "replace", "224.0.0.0/4", "dev", name, "metric", "1000")
        if broadcast_route:
            _ip("-4", "route", "replace", "255.255.255.255/32", "dev", name)
    for net in routes:
        _ip("-6" if net.version == 6 else "-4", "route", "replace", str(net), "dev", name)


def configure_tap(name: str, mac: str, mtu: int,
                  addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> None:
    """A TAP network's device: our stable MAC, MTU, the overlay addresses without their prefix route
    (ham0 keeps that one); members of the network are reached by the host routes of `tap_routes`."""
    _ip("link", "set", "dev", name, "address", mac)
    _ip("link", "set", "dev", name, "mtu", str(mtu))
    for a in addresses:
        extra = ["nodad"] if a.version == 6 else ["broadcast", "+"]
        _ip("-6" if a.version == 6 else "-4", "addr", "replace", str(a), "dev", name, "noprefixroute", *extra)
    _ip("link", "set", "dev", name, "up")


def tap_routes(name: str, add: Iterable[str], remove: Iterable[str] = ()) -> None:
    """Host routes (/32, /128) to a TAP network's members through its device: ARP/ND resolve them there."""
    for a in add:
        v6 = ":" in a
        _ip("-6" if v6 else "-4", "route", "replace", f"{a}/{128 if v6 else 32}", "dev", name)
    for a in remove:
        v6 = ":" in a
        subprocess.run(["ip", "-6" if v6 else "-4", "route", "del", f"{a}/{128 if v6 else 32}", "dev", name],
                       capture_output=True)


def local_ipv4_addresses(exclude: set[str]) -> list[str]:
    """IPv4 addresses of this host's interfaces (LAN candidates), skipping loopback and `exclude`
    devices; the default route's interface first."""
    return [str(i.ip) for i in local_ipv4_interfaces(exclude)]


def local_ipv4_interfaces(exclude: set[str]) -> list[ipaddress.IPv4Interface]:
    """IPv4 interfaces (address and prefix), skipping loopback and `exclude` devices; the interface
    of the default route comes first."""
    r = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True)
    d = subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True)
    default_dev = ""
    if d.returncode == 0:
        routes = json.loads(d.stdout or "[]")
        default_dev = routes[0].get("dev", "") if routes else ""
    if r.returncode != 0:
        return []
    out = []
    for link in json.loads(r.stdout or "[]"):
        if link.get("ifname") in exclude or "LOOPBACK" in link.get("flags", []):
            continue
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                iface = ipaddress.IPv4Interface(f"{a['local']}/{a.get('prefixlen', 32)}")
                out.insert(0, iface) if link.get("ifname") == default_dev else out.append(iface)
    return out


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0
