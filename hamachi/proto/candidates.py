"""Which candidates the server hands out for a client, from what the server itself observed.

A member's candidates reach every co-member, and every co-member sends handshakes to them;
a candidate the server passed on unchecked would let one member aim all the others at a
victim address (a reflection attack). So (in order, best first):

    PUBLIC     the address the control connection comes from (TCP: not spoofable), with the
               port the server's own STUN service saw for the client's first discovery probe
               (txid:T1) if that probe came from the same address, else the client's listen port
    FORWARDED  a port forward the client configured, kept only on that same observed address
    LAN        up to MAX_LAN_CANDIDATES private (RFC 1918, RFC 4193) or link-local literals

The NAT mapping behaviour (which decides birthday probing) is also the server's own
observation: the ports its STUN service saw for the probes to its two addresses (M2, M3,
RFC 5780 §4.3). A client's own claim of "symmetric" is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from hamachi.wire.control import MAX_LAN_CANDIDATES, Candidate

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
FILTERINGS = frozenset((EIM, ADM, APDM))
_LAN_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10"))

Observed = Callable[[bytes], "tuple[str, int] | None"]


def normalize_ip(text: str) -> str | None:
    """An IP literal in canonical form (IPv4-mapped IPv6 as IPv4); None if it is not one."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def is_lan(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr.version == n.version and addr in n for n in _LAN_NETS)


def _seen(report: dict, step: str, observed: Observed | None, source_ip: str) -> int | None:
    """The port the STUN service saw for the client's probe `step`, if it came from `source_ip`."""
    if observed is None:
        return None
    try:
        txid = bytes.fromhex(report.get(f"txid:{step}", ""))
    except ValueError:
        return None
    if len(txid) != 12:
        return None
    seen = observed(txid)
    if seen is None or normalize_ip(seen[0]) != source_ip:
        return None
    return seen[1]


def derive(source_ip: str, listen_port: int, report: dict, claimed: tuple[Candidate, ...],
           observed: Observed | None) -> tuple[tuple[Candidate, ...], str]:
    """(candidates best first, NAT mapping as observed or "") for one client's Discovery."""
    ip = normalize_ip(source_ip)
    out: list[Candidate] = []
    if ip is not None:
        port = _seen(report, "T1", observed, ip) or listen_port
        if 1 <= port <= 65535:
            out.append(Candidate(Candidate.PUBLIC, ip, port))
        fwd = [c for c in claimed if c.kind == Candidate.FORWARDED and c.ip == ip]
        out += fwd[:1]
    lan = [c for c in claimed if c.kind == Candidate.LAN and is_lan(c.ip)]
    out += lan[:MAX_LAN_CANDIDATES]
    unique = tuple(dict.fromkeys(out))
    mapping = ""
    if ip is not None:
        m1, m2, m3 = (_seen(report, s, observed, ip) for s in ("T1", "M2", "M3"))
        if m1 is not None and m2 is not None and m1 == m2:
            mapping = EIM
        elif m2 is not None and m3 is not None:
            mapping = ADM if m2 == m3 else APDM
    return unique, mapping
