"""Raw Ethernet tools for the TAP lab tests, run inside a lab host: `python -m tests.lab.ethprobe ...`.

    send IFACE HEXFRAME [--count N] [--rate R]           send a frame as is (AF_PACKET), N times (R/s)
    listen IFACE MARKERHEX [--seconds S] [--pcap FILE]   print each received frame holding the marker
                                                         (JSON lines, hex), optionally into a pcap file
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40


def send(iface: str, frame: bytes, count: int, rate: float = 0) -> None:
    """`count` frames, 50 ms apart; with `rate`, `count` frames paced at `rate` frames/s (a storm)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    start = time.monotonic()
    sent = 0
    for i in range(count):
        try:
            s.send(frame)
            sent += 1
        except BlockingIOError:
            pass
        if rate:
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        else:
            time.sleep(0.05)
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 3)}), flush=True)


def listen(iface: str, marker: bytes, seconds: float, pcap: str | None) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    # The kernel takes a VLAN tag out of a received frame; like tcpdump, put it back (auxdata).
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    out = open(pcap, "wb") if pcap else None
    if out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # pcap, LINKTYPE_ETHERNET
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        r, _, _ = select.select([s], [], [], left)
        if not r:
            continue
        frame, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(32))
        for level, kind, data in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 20:
                status, _, _, _, _, tci, tpid = struct.unpack_from("=IIIHHHH", data)
                if status & TP_STATUS_VLAN_VALID:
                    tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                    frame = frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
        if addr[2] == PACKET_OUTGOING or marker not in frame:
            continue
        if out:
            t = time.time()
            out.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame)
            out.flush()
        print(json.dumps({"frame": frame.hex()}), flush=True)
    if out:
        out.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("send")
    a.add_argument("iface")
    a.add_argument("frame")
    a.add_argument("--count", type=int, default=3)
    a.add_argument("--rate", type=float, default=0)
    b = sub.add_parser("listen")
    b.add_argument("iface")
    b.add_argument("marker")
    b.add_argument("--seconds", type=float, default=5)
    b.add_argument("--pcap")
    args = ap.parse_args()
    if args.cmd == "send":
        send(args.iface, bytes.fromhex(args.frame), args.count, args.rate)
    else:
        listen(args.iface, bytes.fromhex(args.marker), args.seconds, args.pcap)


if __name__ == "__main__":
    main()
