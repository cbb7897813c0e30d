"""mDNS (RFC 6762) announce and browse of `_hamachi._udp.local.` with python-zeroconf.

Only the given LAN addresses are used: zeroconf joins the multicast group on
those interfaces alone, so nothing is announced or heard on the party's own
TUN/TAP device or on loopback. What a TXT record means is proto/party.py's
business; this module only moves it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

from hamachi.proto.party import SERVICE_TYPE, Announcement, AnnouncementError

log = logging.getLogger("hamachi.mdns")


def _zeroconf(addresses: list[str]) -> Zeroconf:
    return Zeroconf(interfaces=list(addresses) or None, ip_version=IPVersion.V4Only)


class Announcer:
    """Announces one party until `close()`; `update()` re-announces a changed TXT (members)."""

    def __init__(self, announcement: Announcement, addresses: list[str], instance: str):
        self.zc = _zeroconf(addresses)
        self.instance = instance
        self._info = self._make(announcement, addresses)
        self.zc.register_service(self._info, allow_name_change=True)
        log.info("announcing %r on %s as %s", announcement.name, ", ".join(addresses), self._info.name)

    def _make(self, a: Announcement, addresses: list[str]) -> ServiceInfo:
        name = f"{self.instance}.{SERVICE_TYPE}"
        return ServiceInfo(SERVICE_TYPE, name, port=a.port, properties=a.txt(),
                           addresses=[socket.inet_aton(x) for x in addresses],
                           server=f"{self.instance.replace(' ', '-')}.local.")

    def update(self, announcement: Announcement, addresses: list[str]) -> None:
        info = self._make(announcement, addresses)
        info.name = self._info.name  # keep the name it was registered under (after any conflict rename)
        self._info = info
        self.zc.update_service(info)

    def close(self) -> None:
        try:
            self.zc.unregister_service(self._info)
        finally:
            self.zc.close()


class _Collect(ServiceListener):
    def __init__(self):
        self.names: set[str] = set()
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.add(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        pass


def browse(addresses: list[str], seconds: float) -> tuple[list[Announcement], int]:
    """Parties announced on the LAN within `seconds`, and how many announcements were malformed."""
    zc = _zeroconf(addresses)
    found: list[Announcement] = []
    bad = 0
    try:
        listener = _Collect()
        browser = ServiceBrowser(zc, SERVICE_TYPE, listener)
        time.sleep(seconds)
        browser.cancel()
        with listener.lock:
            names = sorted(listener.names)
        for name in names:
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=2000)
            if info is None:
                continue
            for addr in info.parsed_addresses(IPVersion.V4Only):
                try:
                    found.append(Announcement.from_txt(dict(info.properties), addr))
                except AnnouncementError as exc:
                    bad += 1
                    log.debug("ignoring announcement %s from %s: %s", name, addr, exc)
    finally:
        zc.close()
    return found, bad
