"""A C fast-path end and a pure-Python end (HAMACHI_NO_C=1) of one tunnel interoperate: the wire
format is the same, and 50 MiB cross in each direction with the same SHA-256.

    a (198.51.100.30, C fast path) ===== UDP 51820 ===== b (198.51.100.31, pure Python)
"""

from __future__ import annotations

import pytest

from hamachi import _accel
from tests.lab import nodes
from tests.test_dataplane_lab import transfer_intact

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(_accel.fast is None, reason=f"the C fast path is {_accel.why_not or 'missing'}")]


def test_c_end_and_python_end_exchange_50_mib(lab_pair, tmp_path):
    lab = lab_pair
    cfgs = nodes.static_pair(lab, tmp_path)
    procs = {"a": nodes.start_client(lab.host("a"), cfgs["a"]),
             "b": nodes.start_client(lab.host("b"), cfgs["b"], env={"HAMACHI_NO_C": "1"})}
    try:
        lab.wait_for(lambda: lab.host("a").run(["ping", "-c1", "-W1", "100.64.0.2"], check=False).returncode == 0,
                     timeout=15, what="ping through the tunnel")
        assert nodes.status(lab.host("a"), cfgs["a"])["fastpath"] == "c"
        assert nodes.status(lab.host("b"), cfgs["b"])["fastpath"].startswith("python")
        transfer_intact(lab, "a", "b", "100.64.0.2", 50)
        transfer_intact(lab, "b", "a", "100.64.0.1", 50)
        for n in ("a", "b"):
            drops = nodes.status(lab.host(n), cfgs[n]).get("drops", {})
            assert not {k: v for k, v in drops.items() if k in ("decrypt_failed", "malformed", "spoofed_source")}, drops
    finally:
        for p in procs.values():
            nodes.stop(p)
