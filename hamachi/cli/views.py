"""Human views of what the daemons report: narrow enough for 80 columns, plain words, no Python values.

Keys are shown short (the first 10 characters; `--json` has them whole); an address
or endpoint is never cut: a cell holds one per line instead. Every view takes the
same dict `--json` prints.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

KEY_CHARS = 10


def short_key(key: str | None) -> str:
    return "-" if not key else key if len(key) <= KEY_CHARS else key[:KEY_CHARS] + "…"


def plain(value: Any) -> str:
    """A setting or counter in words: no None, True, {…} or […]."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        if value and all(isinstance(v, bool) for v in value.values()):
            on = [k for k, v in value.items() if v]
            return ", ".join(on) if on else "none"
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items() if v not in (None, {}, [], "")) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "-"
    return str(value)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _server_line(d: dict[str, Any]) -> str:
    if not d.get("server"):
        return "none (static peers only)"
    if d.get("server_connected"):
        port = d.get("server_port")
        return f"{d['server']} connected" + (f" (TCP {port})" if port else "")
    return f"{d['server']} NOT connected: {d.get('server_error') or 'connecting'}"


def _table(title: str | None = None) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")


WIDTH = 80
_COLS = (("peer", 20, "<"), ("path", 9, "<"), ("rtt", 9, ">"), ("handshake", 10, ">"), ("rx", 12, ">"),
         ("tx", 12, ">"))


def _row(cells: list[str]) -> str:
    return " ".join(f"{c:{al}{w}}" for c, (_, w, al) in zip(cells, _COLS, strict=True)).rstrip()


def _fill(label: str, items: list[str], indent: str = "    ") -> list[str]:
    """`label a, b, c` on as few lines as fit in 80 columns; an item is never split."""
    lines, cur = [], f"  {label} "
    for i, item in enumerate(items):
        piece = item + ("," if i + 1 < len(items) else "")
        if len(cur) + len(piece) > WIDTH and cur.strip() != label:
            lines.append(cur.rstrip())
            cur = indent
        cur += piece + " "
    lines.append(cur.rstrip())
    return lines


def peers_table(peers: list[dict[str, Any]]) -> Text:
    """One line per peer with the numbers, then its addresses, endpoint and drops below it."""
    lines = ["", "peers", _row([c[0] for c in _COLS]), "-" * 78]
    for p in peers:
        name = p.get("name") or short_key(p.get("public_key"))
        if len(name) > _COLS[0][1]:
            lines.append(name)
            name = ""
        lines.append(_row([
            name, p.get("path") or "-", f"{p['rtt_ms']:.1f} ms" if p.get("rtt_ms") is not None else "-",
            _ago(p.get("last_handshake_ago")),
            f"{fmt_bytes(p.get('rx_bytes', 0))}", f"{fmt_bytes(p.get('tx_bytes', 0))}"]))
        if p.get("addresses"):
            lines += _fill("address", p["addresses"])
        if p.get("relay"):
            lines.append(f"  via relay {p['relay']}")
        elif p.get("endpoint"):
            lines.append(f"  endpoint {p['endpoint']}")
        drops = [f"{k} {v}" for k, v in (p.get("drops") or {}).items() if v]
        if drops:
            lines += _fill("drops", drops)
    if not peers:
        lines.append("(no peers yet)")
    return Text("\n".join(lines))


# Drops every fresh interface shows: the kernel's own IPv6 chatter (router solicitations, MLD
# reports) to addresses no peer has. Counted, but shown apart from real drops.
EXPECTED_DROPS = {"no_route": "packets to an overlay address no peer has (a fresh interface's own IPv6 "
                              "router solicitations and MLD reports land here: harmless)"}


def drops_table(drops: dict[str, int]) -> Table | None:
    if not any(drops.values()):
        return None
    t = _table("dropped packets")
    t.add_column("reason", overflow="fold")
    t.add_column("count", justify="right")
    t.add_column("meaning", overflow="fold")
    for k, v in sorted(drops.items()):
        if v:
            t.add_row(k, str(v), EXPECTED_DROPS.get(k, ""))
    return t


def networks_lines(d: dict[str, Any]) -> Text:
    """Each network: mode, the device it uses (a TAP network has its own), broadcast and frame counters."""
    lines = ["", "networks"]
    for n in d.get("networks") or []:
        dev = n.get("device")
        if n.get("mode") == "tap":
            where = f"{dev['device']} MAC {n.get('mac', '-')}" if dev else "no device yet"
        else:
            where = str(d.get("interface"))
        lines.append(f"{n['name']} ({n.get('mode')}) on {where}, broadcast {'on' if n.get('broadcast') else 'off'}")
        counts = [f"rx {n.get('rx', 0)}", f"tx {n.get('tx', 0)}"]
        if dev:
            counts += [f"frames in {dev['rx_frames']} ({fmt_bytes(dev['rx_bytes'])})",
                       f"out {dev['tx_frames']} ({fmt_bytes(dev['tx_bytes'])})",
                       f"learned MACs {n.get('learned_macs', 0)}"]
        lines += _fill("traffic", counts)
        drops = [f"{k} {v}" for k, v in (n.get("drops") or {}).items() if v]
        if drops:
            lines += _fill("drops", drops)
    return Text("\n".join(lines))


def status(d: dict[str, Any]) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("interface", f"{d.get('interface')} ({d.get('mode', 'tun')}), UDP port {d.get('listen')}")
    head.add_row("addresses", "\n".join(d.get("addresses", [])) or "-")
    head.add_row("public key", short_key(d.get("public_key")))
    head.add_row("server", _server_line(d))
    if d.get("nat_summary"):
        head.add_row("NAT", d["nat_summary"])
    head.add_row("offload", plain(d.get("offload")))
    if d.get("fastpath"):
        head.add_row("fast path", "C" if d["fastpath"] == "c" else d["fastpath"])
    parts: list[Any] = [head, peers_table(d.get("peers", []))]
    if d.get("networks"):
        parts.append(networks_lines(d))
    dt = drops_table(d.get("drops") or {})
    if dt is not None:
        parts.append(dt)
    return Group(*parts)


def doctor(d: dict[str, Any]) -> str:
    return "\n".join(f"{'ok ' if f['ok'] else '!! '} {f['topic']}: {f['text']}" for f in d["findings"])


def key_values(d: dict[str, Any], title: str | None = None) -> Table:
    """server/relay status and --check: one setting per row, nested sections as "name key value"."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in d.items():
        if isinstance(v, dict) and v and not all(isinstance(x, bool) for x in v.values()):
            t.add_row(k, "\n".join(f"{sk}: {plain(sv)}" for sk, sv in v.items()) or "-")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            t.add_row(k, "\n".join(plain(x) for x in v))
        else:
            t.add_row(k, plain(v))
    if title:
        return Group(title, t)
    return t


def ping_reply(d: dict[str, Any]) -> str:
    """One line per echo, saying the path it took (as `tailscale ping` does)."""
    if d["path"] == "relayed":
        via = f"via relay {d['relay'] or d['endpoint']}"
    elif d["path"] == "direct":
        via = f"via {d['endpoint']} ({'direct, LAN' if d.get('lan') else 'direct'})"
    else:
        via = f"no path yet ({d['path']})"
    if d["rtt_ms"] is None:
        return f"no reply from {d['peer']} ({d['address']}) within the timeout, {via}"
    return f"pong from {d['peer']} ({d['address']}) {via} in {d['rtt_ms']:.1f} ms"
