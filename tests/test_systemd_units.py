"""configs/systemd/: the units for server, relay and client pass `systemd-analyze verify` (no
warning about them at all), keep their hardening, and `systemd-analyze security --offline` rates
each of them OK or better."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "configs" / "systemd"
NAMES = ("hamachi-server.service", "hamachi-relay.service", "hamachi-client@.service")


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The units as an operator installs them, ExecStart pointing at this machine's hamachi (verify
    checks that the program exists), and one instance of the client template."""
    exe = shutil.which("hamachi") or str(Path(sys.executable).parent / "hamachi")
    if not Path(exe).exists():
        pytest.skip("no hamachi executable installed (pip install .) for the units to run")
    d = tmp_path_factory.mktemp("units")
    for name in NAMES:
        (d / name).write_text((UNITS / name).read_text().replace("/usr/local/bin/hamachi", exe))
    shutil.copy(d / "hamachi-client@.service", d / "hamachi-client@home.service")
    return d


def test_units_keep_their_hardening():
    for name in NAMES:
        s = settings((UNITS / name).read_text())
        assert s["Restart"] == ["on-failure"], name
        assert s["User"] == ["hamachi"] and s["NoNewPrivileges"] == ["yes"], name
        assert s["StateDirectory"][0].startswith("hamachi/"), name
        assert s["ProtectSystem"] == ["strict"], name
        assert s["ExecStart"][0].startswith("/usr/local/bin/hamachi "), name
    client = settings((UNITS / "hamachi-client@.service").read_text())
    assert client["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"] == client["AmbientCapabilities"]
    for name in NAMES[:2]:
        assert settings((UNITS / name).read_text())["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
        assert settings((UNITS / name).read_text())["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_systemd_analyze_verify(installed):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    files = [str(installed / n) for n in ("hamachi-server.service", "hamachi-relay.service",
                                          "hamachi-client@home.service")]
    r = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # Unknown keys and bad values are only warnings: none may name our units.
    ours = [line for line in r.stderr.splitlines() if "hamachi" in line]
    assert ours == [], "\n".join(ours)


def test_systemd_analyze_security_rates_them_ok(installed):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    for name in ("hamachi-server.service", "hamachi-relay.service", "hamachi-client@home.service"):
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(installed / name)],
                           capture_output=True, text=True, timeout=120)
        if "--offline" in r.stderr and "unrecognized" in r.stderr:
            pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
        assert m, r.stdout[-500:] + r.stderr[-500:]
        assert float(m.group(1)) <= 4.5, (name, m.group(1))  # "OK" in systemd's words
