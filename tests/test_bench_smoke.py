"""scripts/bench keeps working: one quick run, all sections (data, control, relay) present, traffic flowed.
No speed is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_lab

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab


def test_bench_quick_smoke():
    require_lab()
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed (run scripts/setup)")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["schema_version"] == 1
    data = out["data"]
    assert {"veth", "hamachi"} <= set(data)
    for name, m in data.items():
        assert m["tcp1"] > 0 and m["tcp4"] > 0, name
        assert m["rtt_avg"] is not None, name
    assert data["hamachi"]["tcp_loss"] > 0
    assert data["hamachi"]["small_pps"] > 0
    if shutil.which("wireguard-go") and shutil.which("wg"):
        assert out["anchor"] in data and "tcp1" in out["ratios_vs_wireguard_go"]
        # the loss row drops 2% of wire datagrams (counted in the bridge), not whole GSO bursts
        assert 0.5 < data[out["anchor"]]["loss_dropped_pct"] < 5
    assert 0.5 < data["hamachi"]["loss_dropped_pct"] < 5
    assert all(v > 0 for v in data["hamachi"]["cpu_s_per_gbit"].values())
    tap = out["tap"]  # TCP over an Ethernet (TAP) network, beside the TUN row
    assert tap["tcp1"] > 0 and tap["tcp4"] > 0 and tap["rtt_avg"] is not None
    assert tap["device"]["rx_frames"] > 0 and tap["device"]["tx_frames"] > 0
    if shutil.which("tincd"):
        assert tap["tinc"]["tcp1"] > 0  # tinc 1.0 in switch mode, in the same run
    control = out["control"]
    assert control["clients"] == 100 and control["logins_per_s"] > 0
    assert control["fanout_samples"] > 0 and control["fanout_p99_ms"] is not None
    relay = out["relay"]
    for n in (1, 10):
        assert relay[f"pairs_{n}"]["relay_mbit_s"] > 0 and relay[f"pairs_{n}"]["direct_mbit_s"] > 0
