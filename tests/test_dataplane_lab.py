"""The real client daemon in the lab: TUN devices, UDP between namespaces, real ping and iperf3.

    a (198.51.100.30) --- inet --- b (198.51.100.31)        srv (198.51.100.10): the attacker's seat
    ham0 100.64.0.1  ===== encrypted UDP 51820 =====  ham0 100.64.0.2
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import pytest

from tests.lab import nodes

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def tunnel(lab_pair, tmp_path_factory):
    lab = lab_pair
    d = tmp_path_factory.mktemp("static")
    cfgs = nodes.static_pair(lab, d)
    procs = {n: nodes.start_client(lab.host(n), cfgs[n]) for n in ("a", "b")}
    lab.wait_for(lambda: lab.host("a").run(["ping", "-c1", "-W1", "100.64.0.2"], check=False).returncode == 0,
                 timeout=15, what="ping through the tunnel")
    yield lab, cfgs, procs
    for p in procs.values():
        nodes.stop(p)


def test_ping_and_status(tunnel):
    lab, cfgs, _ = tunnel
    r = lab.host("a").run(["ping", "-c5", "-i0.2", "-W2", "100.64.0.2"])
    assert " 0% packet loss" in r.stdout
    st = nodes.status(lab.host("a"), cfgs["a"])
    (peer,) = st["peers"]
    assert peer["name"] == "b" and peer["endpoint"] == "198.51.100.31:51820"
    assert peer["rx_packets"] >= 5 and peer["tx_packets"] >= 5
    assert peer["last_handshake_ago"] is not None
    assert st["schema_version"] == 1 and set(st["offload"]) == {"tun_tso", "tun_uso", "udp_gso", "udp_gro"}


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is not installed (run scripts/setup)")
def test_iperf3_tcp_through_the_tunnel(tunnel):
    lab, _, _ = tunnel
    server = lab.host("b").popen(["iperf3", "-s", "-1", "-B", "100.64.0.2"], stdout=subprocess.DEVNULL)
    lab.wait_for(lambda: "5201" in lab.host("b").run(["ss", "-ltn"]).stdout, what="iperf3 server")
    r = lab.host("a").run(["iperf3", "-c", "100.64.0.2", "-t", "2", "-J"], timeout=30)
    server.wait(timeout=10)
    result = json.loads(r.stdout)
    assert result["end"]["sum_received"]["bytes"] > 1_000_000


RECEIVER = textwrap.dedent("""
    import socket, hashlib, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 9000)); s.listen(1)
    c, _ = s.accept(); h = hashlib.sha256(); n = 0
    while True:
        d = c.recv(1 << 20)
        if not d: break
        h.update(d); n += len(d)
    print(n, h.hexdigest())
    """)
SENDER = textwrap.dedent("""
    import socket, hashlib, sys
    h = hashlib.sha256(); s = socket.create_connection((sys.argv[1], 9000))
    block = hashlib.sha512(b"hamachi").digest() * 16384  # 1 MiB, not all one byte
    for i in range(int(sys.argv[2])):
        chunk = bytes([i]) + block[1:]
        s.sendall(chunk); h.update(chunk)
    s.close(); print(int(sys.argv[2]) * len(block), h.hexdigest())
    """)


def transfer_intact(lab, src: str, dst: str, dst_ip: str, mib: int) -> None:
    """`mib` MiB over TCP from host `src` to `dst_ip` (on host `dst`); the SHA-256 must match."""
    recv = lab.host(dst).popen(["python3", "-c", RECEIVER, dst_ip], stdout=subprocess.PIPE, text=True)
    lab.wait_for(lambda: f"{dst_ip}:9000" in lab.host(dst).run(["ss", "-ltn"]).stdout, what="receiver")
    send = lab.host(src).run(["python3", "-c", SENDER, dst_ip, str(mib)], timeout=120)
    out, _ = recv.communicate(timeout=60)
    assert out.split() == send.stdout.split()
    assert int(out.split()[0]) == mib * 1024 * 1024


UDP_RECEIVER = textwrap.dedent("""
    import socket, hashlib
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("100.64.0.2", 9001)); s.settimeout(3); print("ready", flush=True)
    good = bad = 0
    try:
        while True:
            d = s.recv(2000)
            seq = int.from_bytes(d[:4], "big")
            if d[4:] == hashlib.sha256(d[:4]).digest() * ((seq // 50) % 40): good += 1
            else: bad += 1
    except OSError:
        pass
    print(good, bad)
    """)
UDP_SENDER = textwrap.dedent("""
    import socket, hashlib, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(3000):
        h = seq.to_bytes(4, "big")
        s.sendto(h + hashlib.sha256(h).digest() * ((seq // 50) % 40), ("100.64.0.2", 9001))
        if seq % 200 == 199: time.sleep(0.01)
    """)


def test_udp_bursts_arrive_intact(tunnel):
    """Runs of equal-sized datagrams are written to the TUN as UDP super-packets where the kernel
    supports it: every datagram must still arrive whole (sizes change every 50 datagrams)."""
    lab, cfgs, _ = tunnel
    st = nodes.status(lab.host("b"), cfgs["b"])
    recv = lab.host("b").popen(["python3", "-c", UDP_RECEIVER], stdout=subprocess.PIPE, text=True)
    assert recv.stdout.readline().strip() == "ready"
    lab.host("a").run(["python3", "-c", UDP_SENDER], timeout=60)
    good, bad = map(int, recv.communicate(timeout=30)[0].split())
    assert bad == 0 and good >= 2900, (good, bad, st["offload"])


def test_50mb_transfer_arrives_intact(tunnel):
    lab, _, _ = tunnel
    transfer_intact(lab, "a", "b", "100.64.0.2", 50)


SNIFF = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.bind(("eth0", 0)); s.settimeout(10)
    while True:
        pkt = s.recv(2048)
        ihl = (pkt[0] & 15) * 4
        if pkt[9] == 17 and int.from_bytes(pkt[ihl+2:ihl+4], "big") == 51820 and pkt[ihl+8] == 4 and len(pkt) > ihl + 8 + 60:
            print(pkt[ihl+8:].hex(), flush=True); break
    """)


def test_replayed_tampered_and_spoofed_packets_are_dropped_and_counted(tunnel):
    lab, cfgs, _ = tunnel
    a, b, srv = lab.host("a"), lab.host("b"), lab.host("srv")
    before = nodes.status(b, cfgs["b"])["peers"][0]["drops"]
    sniff = b.popen(["python3", "-c", SNIFF], stdout=subprocess.PIPE, text=True)
    lab.wait_for(lambda: a.run(["ping", "-c1", "-s200", "-W1", "100.64.0.2"], check=False).returncode == 0
                 and sniff.poll() is not None, timeout=15, what="a captured data packet")
    captured = bytes.fromhex(sniff.stdout.read().strip())
    tampered = bytearray(captured)
    tampered[8:16] = (2**40).to_bytes(8, "little")  # a fresh counter, so it reaches the AEAD
    tampered[-1] ^= 1
    inject = ("import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
              "[s.sendto(bytes.fromhex(h),('198.51.100.31',51820)) for h in sys.argv[1:]]")
    srv.run(["python3", "-c", inject, captured.hex(), bytes(tampered).hex()])
    # Spoofed inner source: a raw IP packet with a forged source enters a's TUN and is sealed to b.
    spoof = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW);"
             "s.setsockopt(socket.SOL_SOCKET,socket.SO_BINDTODEVICE,b'ham0');"
             "ip=bytes([0x45,0,0,28,0,1,0,0,64,17,0,0,100,64,0,99,100,64,0,2])+bytes(8);"
             "s.sendto(ip,('100.64.0.2',0))")
    a.run(["python3", "-c", spoof])

    def counted():
        d = nodes.status(b, cfgs["b"])["peers"][0]["drops"]
        return all(d.get(k, 0) > before.get(k, 0) for k in ("replay", "decrypt_failed", "spoofed_source")) and d
    drops = lab.wait_for(counted, timeout=10, what="drops counted under replay, decrypt_failed, spoofed_source")
    assert drops
    # The tunnel still works afterwards.
    a.run(["ping", "-c1", "-W2", "100.64.0.2"])


def test_tunnel_recovers_after_one_side_restarts(tunnel):
    lab, cfgs, procs = tunnel
    nodes.stop(procs["b"])
    assert lab.host("a").run(["ping", "-c1", "-W1", "100.64.0.2"], check=False).returncode != 0
    procs["b"] = nodes.start_client(lab.host("b"), cfgs["b"])
    lab.wait_for(lambda: lab.host("a").run(["ping", "-c1", "-W1", "100.64.0.2"], check=False).returncode == 0,
                 timeout=30, what="ping after b restarted")
