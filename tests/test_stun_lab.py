"""Interop: coturn's turnutils_natdiscovery, pointed at OUR STUN service, classifies every lab NAT as built.

The lab self-test (test_lab.py) shows the same tool gives the same verdicts against coturn's own server;
here the server is `hamachi server run` on srv with both public addresses (RFC 5780).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.lab import nodes
from tests.lab.selftest import EXPECTED_BY_KIND, classify

pytestmark = pytest.mark.lab
PORT = 5478


@pytest.fixture(scope="module")
def our_stun(lab_standard, tmp_path_factory):
    lab = lab_standard
    d = tmp_path_factory.mktemp("stun")
    srv = lab.host("srv")
    nodes.cli(srv, "server", "init", "--dir", str(d), "--public-address", "198.51.100.10", "--public-address",
              "198.51.100.11")
    cfg = d / "server.toml"
    text = cfg.read_text().replace("stun_port = 3478", f"stun_port = {PORT}")
    text = text.replace("/run/hamachi/server.sock", str(d / "api.sock")).replace("0.0.0.0:7777", "0.0.0.0:7790")
    cfg.write_text(text)
    log = open(d / "server.log", "ab")
    p = srv.popen([*nodes.hamachi_cmd(), "server", "run", "--config", str(cfg)], stdout=log, stderr=log,
                  cwd=str(nodes.ROOT))
    lab.wait_for(lambda: f"198.51.100.11:{PORT + 1}" in srv.run(["ss", "-lun"]).stdout, timeout=20,
                 what="our STUN service")
    yield lab, cfg
    nodes.stop(p)


def test_natdiscovery_against_our_server_classifies_every_nat(our_stun):
    lab, cfg = our_stun
    hosts = [(n, "none", None) for n in lab.topo.public]
    for s in lab.topo.sites:
        hosts += [(f"{s.name}-{i}", s.nat, s.hairpin if s.hosts > 1 else None) for i in range(1, s.hosts + 1)]
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda h: classify(lab, h[0], port=PORT), hosts))
    rows, bad = [], []
    for (name, kind, hairpin), res in zip(hosts, results, strict=True):
        want_m, want_f = EXPECTED_BY_KIND[kind]
        ok = res["mapping"] == want_m and res["filtering"] == want_f and (hairpin is None or res["hairpin"] == hairpin)
        rows.append(f"{name:6s} {kind:16s} {res['mapping']} / {res['filtering']} / hairpin={res['hairpin']}")
        if not ok:
            bad.append(rows[-1])
    print("\n".join(rows))
    assert not bad, "\n".join(bad)
    status = json.loads(nodes.cli(lab.host("srv"), "server", "status", "--config", str(cfg), "--json").stdout)
    assert status["stun"]["answered"] > 0
