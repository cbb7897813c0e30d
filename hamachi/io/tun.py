"""The one TUN/TAP abstraction.

Which library does what:
* python-pytun opens plain devices (no offloads): TUN (IP) or TAP (Ethernet), IFF_NO_PI.
* python-pytun has no IFF_VNET_HDR flag and no TUNSETOFFLOAD call, so for the
  offload path we open /dev/net/tun ourselves with fcntl.ioctl: IFF_VNET_HDR
  puts a 10-byte virtio-net header in front of every packet, and TUNSETOFFLOAD
  with TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6 lets the kernel hand us TCP
  super-packets of up to 64 KB that we cut up ourselves (see proto/offload.py);
  TUN_F_USO4|TUN_F_USO6 (Linux 6.2+) does the same for UDP, and lets us write
  runs of small UDP datagrams (games) as one super-packet.
* Addresses, routes and MTU are set with iproute2 (`ip`), see io/netconf.py.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

READ_SIZE = 65536 + 64


class TunDevice:
    """A TUN (mode "tun") or TAP (mode "tap") device; `vnet` says whether offloads are on."""

    def __init__(self, name: str, mode: str = "tun", offload: bool = True):
        self.mode = mode
        self.vnet = False
        self.tso = False
        self.uso = False
        self._pytun = None
        if offload:
            try:
                self._open_vnet(name)
            except OSError:
                self.fd = -1
        if not self.vnet:
            import pytun

            flags = (pytun.IFF_TUN if mode == "tun" else pytun.IFF_TAP) | pytun.IFF_NO_PI
            self._pytun = pytun.TunTapDevice(name=name, flags=flags)
            self.fd = self._pytun.fileno()
            self.name = self._pytun.name
        os.set_blocking(self.fd, False)

    def _open_vnet(self, name: str) -> None:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            flags = (IFF_TUN if self.mode == "tun" else IFF_TAP) | IFF_NO_PI | IFF_VNET_HDR
            ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
            self.name = ifr[:16].rstrip(b"\x00").decode()
            if self.mode == "tun":
                base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
                try:  # Linux >= 6.2: UDP segmentation too (we may write UDP super-packets)
                    fcntl.ioctl(fd, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6)
                    self.uso = True
                except OSError:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, base)
                self.tso = True
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.vnet = True

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes:
        """One packet (with its virtio-net header when `vnet`); raises BlockingIOError when empty."""
        return os.read(self.fd, READ_SIZE)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        if self._pytun is not None:
            self._pytun.close()
            self._pytun = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
