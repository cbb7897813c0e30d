"""The client's one UDP socket, with UDP GSO for sending and UDP GRO for receiving.

GSO (UDP_SEGMENT cmsg on sendmsg) hands the kernel many equal-sized
datagrams to one destination in one call; GRO (UDP_GRO socket option) hands
us many datagrams of one flow in one recvmsg, with their size in a cmsg.
Either is used only where the kernel accepts it; `gso`/`gro` say which.
"""

from __future__ import annotations

import errno
import socket
import struct

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65507
RECV_SIZE = 65535
_CMSG_SPACE = socket.CMSG_SPACE(4)
# A datagram the network refused right now (full buffers, unreachable, or dropped by a local
# firewall, which the kernel reports as EPERM): counted by the caller, never fatal.
TRANSIENT = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                       errno.EPERM, errno.EACCES, errno.EMSGSIZE})
_U16 = struct.Struct("=H")
# What a bad destination raises (a family the socket cannot reach, a port out of range...): the
# datagram to it is lost and counted, never the others of the batch or of other peers.
SEND_ERRORS = (OSError, OverflowError, TypeError, ValueError)


class UdpSocket:
    def __init__(self, host: str, port: int, offload: bool = True):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.gso = False
        self.gro = False
        self.send_errors = 0  # datagrams lost to a non-transient error (a bad destination)
        if offload:
            try:
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
            self.gso = self._probe_gso()

    def _probe_gso(self) -> bool:
        try:
            self.sock.getsockopt(SOL_UDP, UDP_SEGMENT)
            return True
        except OSError:
            return False

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_batch(self, datagrams: list[bytes], addr: tuple[str, int]) -> int:
        """Send datagrams to one address; equal-sized runs go out as one GSO sendmsg."""
        sent = 0
        n = len(datagrams)
        if not self.gso or n == 1:
            for d in datagrams:
                sent += self._sendto(d, addr)
            return sent
        i = 0
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            total = size
            limit = min(MAX_GSO_SEGMENTS, MAX_GSO_BYTES // size) if size else 1
            while j < n and j - i < limit and len(datagrams[j]) == size:
                total += size
                j += 1
            # A shorter final datagram may ride along in the same super-datagram.
            if j < n and j - i < limit and len(datagrams[j]) < size and total + len(datagrams[j]) <= MAX_GSO_BYTES:
                j += 1
            if j - i == 1:
                sent += self._sendto(datagrams[i], addr)
            else:
                try:
                    self.sock.sendmsg([b"".join(datagrams[i:j])], [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, addr)
                    sent += j - i
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                        self.gso = False  # e.g. the route's device cannot segment: fall back for good
                        for d in datagrams[i:j]:
                            sent += self._sendto(d, addr)
                    elif exc.errno not in TRANSIENT:
                        self.send_errors += j - i
                except SEND_ERRORS:
                    self.send_errors += j - i
            i = j
        return sent

    def _sendto(self, d: bytes, addr) -> int:
        try:
            self.sock.sendto(d, addr)
            return 1
        except OSError as exc:
            if exc.errno not in TRANSIENT:
                self.send_errors += 1
            return 0
        except SEND_ERRORS:
            self.send_errors += 1
            return 0

    def recv_batch(self) -> tuple[list[bytes], tuple[str, int]] | None:
        """One recvmsg: the datagrams (split at the GRO size) and their source; None when empty."""
        try:
            data, anc, _flags, addr = self.sock.recvmsg(RECV_SIZE, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionRefusedError:
            return [], ("", 0)
        seg = 0
        for level, typ, val in anc:
            if level == SOL_UDP and typ == UDP_GRO:
                seg = int.from_bytes(val[:4], "little") if len(val) >= 4 else _U16.unpack(val[:2])[0]
        if seg and len(data) > seg:
            return [data[i : i + seg] for i in range(0, len(data), seg)], addr
        return [data], addr

    def close(self) -> None:
        self.sock.close()
