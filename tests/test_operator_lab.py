"""The operator's side in the lab: real server and clients in namespaces.

    srv 198.51.100.10:7777 (control, TCP; metrics on 127.0.0.1:9477 inside srv)
    a .30 alice   b .31 bob   c .32 carol     each: hamachi client up (TUN ham0)

- the client's Prometheus exporter (127.0.0.1:9477 inside a's namespace) is scraped with a real
  HTTP GET there and parsed with prometheus_client's parser;
"""

from __future__ import annotations

import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab import Topology
from tests.lab.nodes import Deployment

pytestmark = pytest.mark.lab

GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


def scrape(host, url: str = "http://127.0.0.1:9477/metrics") -> dict:
    text = host.run([sys.executable, "-c", GET, url]).stdout
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from tests.conftest import require_lab

    require_lab()
    from tests.lab import Lab

    lab = Lab(Topology(public=["a", "b", "c"]))
    lab.__enter__()
    dep = Deployment(lab, tmp_path_factory.mktemp("operator"))
    try:
        dep.start_server()
        dep.add_client("a", "alice", client_extra="metrics = true")
        dep.add_client("b", "bob")
        dep.add_client("c", "carol")
        yield dep
    finally:
        dep.stop()
        lab.teardown()


def test_client_metrics_are_scraped_and_parsed(deployment):
    d = deployment
    d.ask("a", "alice", "create", "metrics-net")
    d.ask("b", "bob", "join", "metrics-net")
    bob = d.address("b", "bob")
    d.lab.wait_for(lambda: d.can_ping("a", bob), timeout=20, what="alice -> bob")
    m = scrape(d.lab.host("a"))
    assert m["hamachi_client_server_connected"][()] == 1
    assert m["hamachi_client_peers"][(("path", "direct"),)] == 1
    tx = m["hamachi_client_tunnel_packets_total"][(("direction", "tx"), ("path", "direct"), ("peer", "bob"))]
    rx = m["hamachi_client_tunnel_bytes_total"][(("direction", "rx"), ("path", "direct"), ("peer", "bob"))]
    assert tx >= 1 and rx > 0
