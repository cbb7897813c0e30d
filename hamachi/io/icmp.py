"""One ICMP echo through the overlay (for `hamachi client ping`): an unprivileged ICMP datagram
socket where the kernel allows it (net.ipv4.ping_group_range), else a raw socket (CAP_NET_RAW)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _open() -> tuple[socket.socket, bool]:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except OSError:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True


def _echo(address: str, seq: int, timeout: float) -> float | None:
    """Seconds until the echo reply, or None on timeout."""
    sock, raw = _open()
    try:
        sock.settimeout(timeout)
        ident = os.getpid() & 0xFFFF
        payload = b"hamachi ping " + struct.pack("!d", time.monotonic())
        head = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
        packet = struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq & 0xFFFF) + payload
        t0 = time.monotonic()
        sock.sendto(packet, (address, 0))
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data, src = sock.recvfrom(2048)
            except TimeoutError:
                return None
            if raw:  # raw sockets hand us the IP header too
                data = data[(data[0] & 0x0F) * 4:]
            if src[0] != address or len(data) < 8:
                continue
            kind, _, _, _, rseq = struct.unpack("!BBHHH", data[:8])
            # (the kernel rewrites the id of datagram ICMP sockets, so match on seq and payload)
            if kind == 0 and rseq == seq & 0xFFFF and data[8:] == payload:
                return time.monotonic() - t0
    finally:
        sock.close()


async def echo(address: str, seq: int, timeout: float = 2.0) -> float | None:
    return await asyncio.to_thread(_echo, address, seq, timeout)
