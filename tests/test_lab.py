"""The network lab builds, behaves as built (checked by a third-party STUN tool) and always cleans up."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.lab import Lab, Site, Topology, cleanup_stale, list_namespaces
from tests.lab.selftest import format_table, run_selftest

pytestmark = pytest.mark.lab


def test_selftest_every_nat_classified_as_built(lab_standard):
    verdicts = run_selftest(lab_standard)
    table = format_table(verdicts)
    print(table)
    kinds = {v.kind for v in verdicts}
    assert kinds >= {"none", "full-cone", "restricted", "port-restricted", "symmetric", "udp-hostile"}
    assert {v.expected[2] for v in verdicts} >= {True, False}  # hairpin on and off both covered
    assert all(v.ok for v in verdicts), table


def test_everyone_reaches_the_server_and_nat_hides_inner_addresses(lab_standard):
    lab = lab_standard
    for name in ("pub", "fc-1", "sy-1", "cg1-1", "uh-1"):
        lab.host(name).run(["ping", "-c1", "-W2", "198.51.100.10"])
    # The double-NAT pair shares one public address (the CGN's).
    assert lab.public_ip("cg1-1") == lab.public_ip("cg2-1") == lab.public_ip("cgn")
    assert lab.public_ip("pr-1") != lab.host("pr-1").addr


def test_loss_and_rate_helpers(make_lab):
    lab = make_lab(Topology.pair())
    a, b = lab.host("a"), lab.host("b")
    a.run(["ping", "-c1", "-W2", b.addr])
    lab.set_loss("a", 100)
    assert a.run(["ping", "-c2", "-W1", b.addr], check=False).returncode != 0
    lab.clear_loss("a")
    a.run(["ping", "-c1", "-W2", b.addr])
    lab.set_rate("a", 10)
    assert "tbf" in a.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    lab.clear_rate("a")


def test_teardown_even_when_the_body_raises():
    from tests.conftest import require_lab

    require_lab()
    lab = Lab(Topology(public=["x"], sites=[Site("s", "symmetric")]))
    with pytest.raises(RuntimeError):
        with lab:
            names = [h.ns for h in lab.hosts.values()]
            proc = lab.host("x").popen(["sleep", "60"])
            assert set(names) <= set(list_namespaces())
            raise RuntimeError("boom")
    assert not set(names) & set(list_namespaces())
    assert proc.poll() is not None


def test_stale_namespaces_of_dead_runs_are_removed():
    from tests.conftest import require_lab

    require_lab()
    # A PID that cannot exist (above pid_max) marks the run as dead.
    dead = f"hl{2**22 + 1}x0000-x"
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        assert dead in cleanup_stale()
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True)
    mine = Lab(Topology(public=["y"], server=False))
    with mine:
        assert all(ns not in cleanup_stale() for ns in (h.ns for h in mine.hosts.values()))
    assert os.getpid() > 0
