"""Run NAT discovery (proto/discovery.py) on the client's UDP socket before the packet loop owns it."""

from __future__ import annotations

import os
import select
import socket
import time

from hamachi.proto.discovery import Discovery, NatReport


def local_address_towards(host: str, port: int) -> str:
    """The source address the kernel picks for `host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def run(sock: socket.socket, server: tuple[str, int], deadline_s: float = 8.0) -> NatReport:
    local = (local_address_towards(*server), sock.getsockname()[1])
    clock = time.monotonic
    d = Discovery(server, local, os.urandom, clock())
    end = clock() + deadline_s
    while not d.done and clock() < end:
        for data, addr in d.datagrams_to_send():
            try:
                sock.sendto(data, addr)
            except OSError:
                pass  # e.g. a firewall refusing the send: the missing answer is the result
        t = d.next_timer()
        wait = max(0.0, min(t - clock(), end - clock())) if t is not None else 0.0
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            d.receive(data, (addr[0], addr[1]), clock())
        d.handle_timer(clock())
    return d.report
