"""One end with offloads (TSO/GSO/GRO), the other without (one packet at a time, a plain TUN):
TCP in both directions arrives intact. The sender leaves TCP checksums to the receiver, so the
plain end must finish every one in software, and the offload end must hand the kernel its own."""

from __future__ import annotations

import pytest

from tests.lab import nodes
from tests.test_dataplane_lab import transfer_intact

pytestmark = pytest.mark.lab


def test_offload_and_plain_ends_interoperate(lab_pair, tmp_path):
    lab = lab_pair
    cfgs = nodes.static_pair(lab, tmp_path)
    cfgs["b"].write_text(cfgs["b"].read_text().replace("offload = true", "offload = false"))
    procs = {n: nodes.start_client(lab.host(n), cfgs[n]) for n in ("a", "b")}
    try:
        lab.wait_for(lambda: lab.host("a").run(["ping", "-c1", "-W1", "100.64.0.2"], check=False).returncode == 0,
                     timeout=15, what="ping through the tunnel")
        assert all(nodes.status(lab.host("a"), cfgs["a"])["offload"].values())
        assert not any(nodes.status(lab.host("b"), cfgs["b"])["offload"].values())
        transfer_intact(lab, "a", "b", "100.64.0.2", 20)  # TSO segments into a plain TUN
        transfer_intact(lab, "b", "a", "100.64.0.1", 20)  # plain packets into GRO coalescing
    finally:
        for p in procs.values():
            nodes.stop(p)
