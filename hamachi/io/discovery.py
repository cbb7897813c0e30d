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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind(("0.0.0.0", 0))
        while not d.done and clock() < end:
            _step(d, sock, second, clock, end)
    return d.report


def _step(d: Discovery, sock: socket.socket, second: socket.socket, clock, end: float) -> None:
    """Send what is due, wait for one answer or the next timer, feed it in."""
    for data, addr in d.datagrams_to_send():
        try:
            (second if d.from_second_socket else sock).sendto(data, addr)
        except OSError:
            pass  # e.g. a firewall refusing the send: the missing answer is the result
    t = d.next_timer()
    wait = max(0.0, min(t - clock(), end - clock())) if t is not None else 0.0
    ready, _, _ = select.select([sock], [], [], wait)
    if ready:
        try:
            data, addr = sock.recvfrom(2048)
        except (BlockingIOError, ConnectionRefusedError):
            data = None
        if data is not None:
            d.receive(data, (addr[0], addr[1]), clock())
    d.handle_timer(clock())
