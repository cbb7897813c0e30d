"""The zipapp builds (scripts/test builds it first) and runs with nothing but python3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYZ = ROOT / "dist" / "hamachi.pyz"


@pytest.fixture(scope="module")
def pyz() -> Path:
    if not PYZ.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build-zipapp")], check=True, timeout=600)
    return PYZ


def test_zipapp_help_lists_roles(pyz, tmp_path):
    # A clean environment: no venv on PATH, no PYTHONPATH, so only the bundled code can run.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    r = subprocess.run([python, str(pyz), "--help"], capture_output=True, text=True, timeout=120, env=env,
                       cwd=tmp_path)
    if r.returncode != 0 and "version" in r.stderr.lower():
        pytest.skip(f"{python} is not the Python the zipapp was built for: {r.stderr[-200:]}")
    assert r.returncode == 0, r.stderr
    for role in ("server", "relay", "client"):
        assert role in r.stdout


def test_zipapp_version_says_what_it_was_built_for_and_old_builds_go(pyz, tmp_path):
    root = Path(os.path.expanduser("~/.cache/hamachi-shiv"))  # shiv.spec's root, fixed at build time
    stale = root / "hamachi.pyz_0000test-stale"
    (stale / "site-packages").mkdir(parents=True, exist_ok=True)
    os.utime(stale, (time.time() - 30 * 86400,) * 2)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the bundled code
    r = subprocess.run([sys.executable, str(pyz), "--version"], capture_output=True, text=True, timeout=120,
                       env={**env, "HOME": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    v = sys.version_info
    assert r.stdout.strip() == f"hamachi 0.1.0 (zipapp for CPython {v.major}.{v.minor}, linux {os.uname().machine})"
    assert not stale.exists()  # a build unused for a month is cleaned from the cache


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    """`pip wheel .` then `pip install` into a new venv (dependencies from the configured index)."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("hamachi-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # else pip sees the source tree's egg-info
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                       timeout=600, env=clean)
    if r.returncode != 0 and ("No matching distribution" in r.stderr or "connection" in r.stderr.lower()):
        pytest.skip(f"the dependencies are not installable here (no index): {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: the wheel's code
    r = subprocess.run([str(venv / "bin" / "hamachi"), "--help"], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0 and "Usage: hamachi" in r.stdout, r.stderr
    r = subprocess.run([str(venv / "bin" / "hamachi"), "--version"], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("hamachi 0.1.0 (CPython 3."), r.stdout
