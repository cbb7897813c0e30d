"""nftables rule sets that make a namespace behave like a given kind of NAT.

Linux conntrack NAT gives two behaviours out of the box:

* plain ``masquerade``: endpoint-independent mapping in practice (the source
  port is kept while it is free) with address-and-port-dependent filtering —
  a "port-restricted cone" NAT;
* ``masquerade fully-random``: a fresh random port per destination —
  address-and-port-dependent mapping, a "symmetric" NAT.

Full cone and restricted cone do not exist in nftables, so they are emulated:
every outbound UDP packet writes its public port -> inner address . port into
a dynamic map (after SNAT, at postrouting priority 200, where the packet
already carries its public port), and an inbound packet that starts a new
conntrack entry is DNATed through that map. The restricted variant also
records (public port . remote address) in a set and lets only those remote
addresses in. Hairpinning uses the same map for packets that arrive from the
LAN addressed to the NAT's own WAN address.
"""

from __future__ import annotations

NAT_KINDS = ("none", "full-cone", "restricted", "port-restricted", "symmetric", "udp-hostile", "no-udp", "cgnat")


def ruleset(kind: str, wan_if: str, lan_if: str, wan_ip: str, lan_net: str, *, hairpin: bool = False,
            allow_udp_to: tuple[str, ...] = ()) -> str:
    """The `nft -f` text for a NAT router of `kind` (see NAT_KINDS)."""
    if kind not in NAT_KINDS or kind == "none":
        raise ValueError(f"not a NAT kind: {kind}")
    masq = "masquerade random,fully-random" if kind == "symmetric" else "masquerade"
    # Mapping table: public UDP port -> inner address . port.
    need_map = kind in ("full-cone", "restricted") or hairpin
    lines = [
        "table ip labnat {",
        "  map pmap { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 5m; }",
        "  set allow { type inet_service . ipv4_addr; flags dynamic,timeout; timeout 5m; }",
        "  chain pre {",
        "    type nat hook prerouting priority dstnat; policy accept;",
    ]
    if kind == "full-cone":
        lines.append(f'    iifname "{wan_if}" ip daddr {wan_ip} udp dport @pmap dnat ip addr . port to udp dport map @pmap')
    elif kind == "restricted":
        lines.append(f'    iifname "{wan_if}" ip daddr {wan_ip} udp dport . ip saddr @allow '
                     "dnat ip addr . port to udp dport map @pmap")
    if hairpin:
        lines.append(f'    iifname "{lan_if}" ip daddr {wan_ip} udp dport @pmap dnat ip addr . port to udp dport map @pmap')
    lines += [
        "  }",
        "  chain post {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    if hairpin:
        # A hairpinned packet must look as if it came from the sender's public mapping.
        lines.append(f'    oifname "{lan_if}" ip saddr {lan_net} snat ip to {wan_ip}')
    lines += [
        f'    oifname "{wan_if}" {masq}',
        "  }",
        "  chain record {",
        "    type filter hook postrouting priority 200; policy accept;",
    ]
    if need_map:
        lines.append(f'    oifname "{wan_if}" ip protocol udp ct direction original '
                     "update @pmap { udp sport : ct original ip saddr . ct original proto-src }")
    if kind == "restricted":
        lines.append(f'    oifname "{wan_if}" ip protocol udp update @allow {{ udp sport . ip daddr }}')
    lines += [
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        "    ct status dnat accept",
    ]
    if kind in ("udp-hostile", "no-udp"):  # no-udp: not even to the server
        lines.append(f'    iifname "{lan_if}" tcp dport 443 accept')
        for ip in allow_udp_to:
            lines.append(f'    iifname "{lan_if}" ip daddr {ip} udp dport != 0 accept')
        lines.append(f'    iifname "{lan_if}" icmp type echo-request accept')
    else:
        lines.append(f'    iifname "{lan_if}" accept')
    lines += [
        "  }",
        # Like a home router's firewall: unsolicited packets to the router itself from the WAN are
        # dropped, so their conntrack entries are never confirmed (an accepted one would make a later
        # outbound mapping to that peer pick another port, and spoil hole punching).
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f'    iifname "{wan_if}" ct state established,related accept',
        f'    iifname "{wan_if}" icmp type echo-request accept',
        f'    iifname "{wan_if}" drop',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def loss_ruleset(iface: str, percent: int) -> str:
    """Random loss on one interface, both ways (this kernel has no netem)."""
    if percent >= 100:
        drop_in, drop_out = f'iifname "{iface}" drop', f'oifname "{iface}" drop'
        return ("table inet labloss {\n"
                f"  chain out {{ type filter hook output priority 0; policy accept; {drop_out}; }}\n"
                f"  chain in {{ type filter hook prerouting priority 0; policy accept; {drop_in}; }}\n}}\n")
    return (
        "table inet labloss {\n"
        "  chain out { type filter hook output priority 0; policy accept;\n"
        f'    oifname "{iface}" numgen random mod 100 < {percent} drop\n  }}\n'
        "  chain in { type filter hook prerouting priority 0; policy accept;\n"
        f'    iifname "{iface}" numgen random mod 100 < {percent} drop\n  }}\n'
        "}\n"
    )
