"""Tiny UDP tools for the LAN lab tests, run inside a lab host: `python -m tests.lab.lanprobe ...`.

    listen PORT [--group G --iface-addr A] [--seconds S] [--expect N]   print each datagram (JSON lines)
    send DST PORT PAYLOAD [--bind A] [--ttl N] [--count N]  broadcast/multicast sender
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time


def listen(port: int, group: str | None, iface_addr: str | None, seconds: float, expect: int = 0) -> None:
    """Until `seconds` pass, or until `expect` distinct payloads arrived (0: the whole time)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    if group:
        mreq = socket.inet_aton(group) + socket.inet_aton(iface_addr or "0.0.0.0")
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + seconds
    seen: set[bytes] = set()
    while (left := end - time.monotonic()) > 0:
        r, _, _ = select.select([s], [], [], left)
        if r:
            data, src = s.recvfrom(65535)
            print(json.dumps({"src": src[0], "data": data.decode(errors="replace")}), flush=True)
            seen.add(data)
            if expect and len(seen) >= expect:
                return


def send(dst: str, port: int, payload: str, bind: str | None, ttl: int, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    if bind:
        s.bind((bind, 0))
    for _ in range(count):
        s.sendto(payload.encode(), (dst, port))
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    li = sub.add_parser("listen")
    li.add_argument("port", type=int)
    li.add_argument("--group")
    li.add_argument("--iface-addr")
    li.add_argument("--seconds", type=float, default=10.0)
    li.add_argument("--expect", type=int, default=0)
    se = sub.add_parser("send")
    se.add_argument("dst")
    se.add_argument("port", type=int)
    se.add_argument("payload")
    se.add_argument("--bind")
    se.add_argument("--ttl", type=int, default=1)
    se.add_argument("--count", type=int, default=3)
    a = ap.parse_args(argv)
    if a.cmd == "listen":
        listen(a.port, a.group, a.iface_addr, a.seconds, a.expect)
    else:
        send(a.dst, a.port, a.payload, a.bind, a.ttl, a.count)


if __name__ == "__main__":
    main(sys.argv[1:])
