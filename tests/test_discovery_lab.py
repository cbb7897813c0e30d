"""Our RFC 5780 discovery, against coturn's STUN server, agrees with coturn's turnutils_natdiscovery on every NAT."""

from __future__ import annotations

import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.lab import nodes
from tests.lab.selftest import classify, start_coturn

pytestmark = pytest.mark.lab
PROBE = """
import socket, json
from hamachi.io.discovery import run
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 0))
print(json.dumps(run(s, ('198.51.100.10', 3478)).to_dict()))
"""


def test_discovery_matches_the_third_party_tool(lab_standard):
    lab = lab_standard
    hosts = list(lab.topo.public) + [f"{s.name}-1" for s in lab.topo.sites]
    with tempfile.TemporaryDirectory(prefix="hamachi-disc-") as tmp:
        coturn = start_coturn(lab, Path(tmp))
        try:
            with ThreadPoolExecutor(8) as ex:
                ours = list(ex.map(lambda h: json.loads(lab.host(h).run([sys.executable, "-c", PROBE],
                                                                         cwd=str(nodes.ROOT)).stdout), hosts))
                theirs = list(ex.map(lambda h: classify(lab, h), hosts))
        finally:
            coturn.terminate()
            coturn.wait(timeout=5)
    rows = []
    for h, o, t in zip(hosts, ours, theirs, strict=True):
        rows.append((h, (o["mapping"], o["filtering"], o["hairpin"]), (t["mapping"], t["filtering"], t["hairpin"])))
        assert o["udp"] is True
    print("\n".join(f"{h:6s} ours={a} tool={b}" for h, a, b in rows))
    assert all(a == b for _, a, b in rows), rows
    assert ours[hosts.index("pub")]["nat"] is False and ours[hosts.index("pr-1")]["nat"] is True
