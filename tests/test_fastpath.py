"""The C fast path (hamachi._fastpath) against its pure-Python twins, on the same vectors.

Sealed bytes, opened plaintexts with their replay/forgery counts, the replay window, TSO
splitting and GRO-style coalescing: hypothesis builds the inputs (structured IPv4/IPv6/TCP/UDP
packets with edge-case fields, plus random bytes) and both implementations must agree exactly.
A fuzz pass feeds the C receive path garbage: only counted drops may come out.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hamachi import _accel
from hamachi.crypto.replay import ReplayWindow
from hamachi.crypto.session import AEAD_IDS, Session
from hamachi.proto import offload as O

fast = _accel.fast
pytestmark = pytest.mark.skipif(fast is None, reason=f"the C fast path is {_accel.why_not or 'missing'}")
FUZZ = int(os.environ.get("HAMACHI_FUZZ_EXAMPLES", "300"))
many = settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_switch_is_one_environment_variable():
    import subprocess
    import sys

    code = "from hamachi import _accel; print(_accel.fast is None, _accel.why_not)"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HAMACHI_NO_C": "1"}, capture_output=True,
                       text=True, check=True)
    assert r.stdout.split()[0] == "True" and "HAMACHI_NO_C" in r.stdout


# -- AEAD ------------------------------------------------------------------------------------

def pair(aead: str, key_a: bytes, key_b: bytes):
    """(C session, pure-Python session) with the same keys and indices."""
    return (Session(key_a, key_b, 7, 9, 0.0, True, aead, c=True), Session(key_a, key_b, 7, 9, 0.0, True, aead, c=False))


@many
@given(aead=st.sampled_from(sorted(AEAD_IDS)), key=st.binary(min_size=32, max_size=32),
       start=st.integers(0, 2**60), packets=st.lists(st.binary(max_size=1600), max_size=20))
def test_seal_many_matches_the_twin(aead, key, start, packets):
    c, py = pair(aead, key, key)
    c.send_counter = py.send_counter = start
    assert c._c_seal is not None and py._c_seal is None
    assert c.seal_many(packets) == py.seal_many(packets)
    assert c.send_counter == py.send_counter == start + len(packets)
    assert c.seal(b"x") == py.seal(b"x")


def _mangle(d: bytes, how: int, pos: int) -> bytes:
    if how == 0:
        return d
    if how == 1:  # flip one bit anywhere past the header's type byte
        i = 1 + pos % (len(d) - 1)
        return d[:i] + bytes([d[i] ^ 1 << (pos % 8)]) + d[i + 1 :]
    if how == 2:  # truncated, but still long enough to be tried
        return d[: max(32, len(d) - 1 - pos % 8)]
    return d[:8] + struct.pack("<Q", pos * 977) + d[16:]  # a counter the sender never used


@many
@given(aead=st.sampled_from(sorted(AEAD_IDS)), key=st.binary(min_size=32, max_size=32),
       sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
       order=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.integers(0, 10_000)), max_size=80),
       skip=st.integers(0, 5000))
def test_open_many_matches_the_twin(aead, key, sizes, order, skip):
    sender = Session(key, key, 1, 2, 0.0, True, aead, c=False)
    sender.send_counter = skip
    sealed = sender.seal_many([bytes([i % 256]) * n for i, n in enumerate(sizes)])
    # duplicates, reordering, forgeries, truncations and unknown counters, in batches
    stream = [_mangle(sealed[i % len(sealed)], how, pos) for i, how, pos in order] + sealed
    c, py = pair(aead, key, key)
    for k in range(0, len(stream), 7):
        batch = stream[k : k + 7]
        assert c.open_many(batch) == py.open_many(batch)
        assert c.replay.last == py.replay.last


@many
@given(ops=st.lists(st.tuples(st.sampled_from(["check", "update", "advance_fast"]),
                              st.one_of(st.integers(0, 300), st.integers(0, 2**20), st.integers(0, 2**62))),
                    max_size=200))
def test_replay_window_matches_the_twin(ops):
    c, py = fast.Replay(), ReplayWindow()
    for op, n in ops:
        assert getattr(c, op)(n) == getattr(py, op)(n), (op, n)
        assert c.last == py.last


def test_a_c_end_and_a_python_end_talk():
    key1, key2 = os.urandom(32), os.urandom(32)
    for aead in AEAD_IDS:
        a = Session(key1, key2, 1, 2, 0.0, True, aead, c=True)
        b = Session(key2, key1, 2, 1, 0.0, False, aead, c=False)
        msgs = [os.urandom(n) for n in (0, 1, 100, 1400, 65000)]
        assert b.open_many(a.seal_many(msgs)) == (msgs, 0, 0)
        assert a.open_many(b.seal_many(msgs)) == (msgs, 0, 0)


@many
@given(garbage=st.lists(st.binary(max_size=200), max_size=20))
def test_c_open_many_on_garbage_only_counts(garbage):
    c = Session(os.urandom(32), os.urandom(32), 1, 2, 0.0, True, "aes256gcm", c=True)
    pts, replays, forged = c.open_many(garbage)
    assert pts == [] and replays + forged == len(garbage)


def test_bad_arguments_raise_type_or_value_errors():
    with pytest.raises(ValueError):
        fast.Aead(3, bytes(32))
    with pytest.raises(ValueError):
        fast.Aead(1, bytes(31))
    with pytest.raises(TypeError):
        fast.Aead(1, bytes(32)).open_many([b""], ReplayWindow())
    with pytest.raises(ValueError):
        fast.Replay().check(-1)


# -- structured packets ----------------------------------------------------------------------

@st.composite
def ip_tcp(draw, payload_max=3000):
    """An IPv4 or IPv6 TCP packet with edge-case header fields (options, flags, seq near the wrap)."""
    v6 = draw(st.booleans())
    opt_words = draw(st.integers(0, 10))
    tcp_opts = draw(st.binary(min_size=opt_words * 4, max_size=opt_words * 4))
    flags = draw(st.one_of(st.just(O.TCP_ACK), st.just(O.TCP_ACK | O.TCP_PSH), st.integers(0, 255)))
    seq = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 70000, 2**32 - 1)))
    payload = draw(st.binary(max_size=payload_max))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (5 + opt_words) << 4, flags, 512, 0, 0) + tcp_opts
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, len(tcp) + len(payload), 6, 64) + bytes(range(32))
    else:
        ip_opt_words = draw(st.integers(0, 10))
        ip = struct.pack("!BBHHHBBH", 0x40 | (5 + ip_opt_words), 0, 20 + 4 * ip_opt_words + len(tcp) + len(payload),
                         draw(st.integers(0, 0xFFFF)), draw(st.sampled_from([0, 0x4000, 0x2000, 1])), 64, 6, 0)
        ip += bytes([100, 64, 0, 1, 100, 64, 0, 2]) + bytes(4 * ip_opt_words)
    return ip + tcp + payload


@many
@given(pkt=ip_tcp(), mss=st.integers(1, 1500))
def test_split_tcp_matches_the_twin(pkt, mss):
    assert O.split_tcp(pkt, mss) == O.split_tcp_py(pkt, mss)


@many
@given(pkt=st.one_of(ip_tcp(payload_max=50), st.binary(max_size=120)), cut=st.integers(0, 120),
       ihl=st.integers(0, 15), thl=st.integers(0, 15), mss=st.integers(1, 100))
def test_split_tcp_malformed_is_refused_the_same_way(pkt, cut, ihl, thl, mss):
    """Broken headers (IHL or data offset below 5, truncation): C hands them back to the twin,
    which raises OffloadError with a reason, and nothing else escapes."""
    b = bytearray(pkt[:cut] if cut < len(pkt) else pkt)
    if b and b[0] >> 4 == 4:
        b[0] = 0x40 | ihl
    if len(b) > 32:
        b[32] = thl << 4
    b = bytes(b)
    got = fast.split_tcp(b, mss)
    try:
        want = O.split_tcp_py(b, mss)
    except O.OffloadError:
        assert got is None
    else:
        assert got is None or got == want
    if ihl < 5 and b and b[0] >> 4 == 4:
        with pytest.raises(O.OffloadError):
            O.split_tcp(b, mss)


@st.composite
def inner_stream(draw):
    """What a receiver gets: segments of one or two TCP flows (from splitting super-packets),
    UDP datagrams of one flow, small and odd packets, and random bytes, in some order."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            out += O.split_tcp_py(draw(ip_tcp()), draw(st.integers(1, 1400)))
        elif kind == 1:
            size = draw(st.integers(1, 1200))
            n = draw(st.integers(1, 70))
            v6 = draw(st.booleans())
            for i in range(n):
                body = bytes([i % 256]) * (size if i < n - 1 else draw(st.integers(0, size)))
                udp = struct.pack("!HHHH", 5000, 6000, 8 + len(body), 0) + body
                if v6:
                    out.append(struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + bytes(32) + udp)
                else:
                    out.append(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0) + bytes(8) + udp)
        elif kind == 2:
            out.append(draw(ip_tcp(payload_max=30)))
        else:
            out.append(draw(st.binary(max_size=80)))
    if draw(st.booleans()):
        out = draw(st.permutations(out))
    return list(out)


@many
@given(packets=inner_stream(), udp=st.booleans())
def test_coalesce_matches_the_twin(packets, udp):
    assert O.coalesce(packets, udp) == O.coalesce_py(packets, udp)


@many
@given(packets=st.lists(st.binary(max_size=100), max_size=30), udp=st.booleans())
def test_c_coalesce_on_garbage_matches_the_twin(packets, udp):
    assert fast.coalesce(packets, udp) == O.coalesce_py(packets, udp)


def test_coalesce_merges_across_the_sequence_wrap():
    segs = O.split_tcp_py(ip_tcp_fixed(seq=2**32 - 1000, payload=bytes(4000)), 1000)
    assert len(O.coalesce_py(segs)) == len(fast.coalesce(segs, False)) == 1


def ip_tcp_fixed(seq: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 5 << 4, O.TCP_ACK, 512, 0, 0)
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0) + bytes([100, 64, 0, 1, 100, 64, 0, 2])
    return ip + tcp + payload


SANITIZED_FUZZ = r"""
import importlib.machinery, importlib.util, os, random, struct, sys
spec = importlib.util.spec_from_file_location("hamachi._fastpath", sys.argv[1],
                                              loader=importlib.machinery.ExtensionFileLoader("hamachi._fastpath", sys.argv[1]))
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); sys.modules["hamachi._fastpath"] = mod
from hamachi import _accel
assert _accel.fast is mod
from hamachi.crypto.session import Session
from hamachi.proto import offload as O
rnd = random.Random(1)
for aead in ("aes256gcm", "chacha20poly1305"):
    a = Session(bytes(32), bytes(32), 1, 2, 0.0, True, aead)
    sealed = a.seal_many([rnd.randbytes(rnd.randrange(0, 1500)) for _ in range(200)])
    b = Session(bytes(32), bytes(32), 2, 1, 0.0, False, aead)
    for _ in range(int(sys.argv[2])):
        batch = [rnd.choice(sealed) if rnd.random() < 0.5 else rnd.randbytes(rnd.randrange(0, 100)) for _ in range(8)]
        b.open_many(batch)
for _ in range(int(sys.argv[2])):
    pkts = [rnd.randbytes(rnd.randrange(0, 120)) for _ in range(10)]
    for p in pkts:
        mod.split_tcp(p, rnd.randrange(1, 200))
        if len(p) > 40:
            q = bytearray(p); q[0] = 0x45; q[9] = 6; q[32] = rnd.randrange(256)
            mod.split_tcp(bytes(q), rnd.randrange(1, 200))
            mod.coalesce([bytes(q)] * 3, True)
    udp = rnd.random() < 0.5
    assert mod.coalesce(pkts, udp) == O.coalesce_py(pkts, udp)
    segs = O.split_tcp_py(bytes([0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]) + bytes(8) + struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 0x50, 16, 5, 0, 0) + rnd.randbytes(5000), 1000)
    assert mod.coalesce(segs, False) == O.coalesce_py(segs, False)
print("ok")
"""


def test_c_fast_path_under_address_and_undefined_sanitizers(tmp_path):
    """The C receive path, built with -fsanitize=address,undefined, fed random and structured input."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.exists(asan):
        pytest.skip("libasan is not installed")
    src = Path(__file__).resolve().parent.parent / "hamachi" / "_fastpath.c"
    so = tmp_path / f"_fastpath{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined", f"-I{sysconfig.get_paths()['include']}", str(src), "-lcrypto",
                    "-o", str(so)], check=True, capture_output=True)
    env = {**os.environ, "LD_PRELOAD": asan, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    r = subprocess.run([sys.executable, "-c", SANITIZED_FUZZ, str(so), str(FUZZ * 10)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
