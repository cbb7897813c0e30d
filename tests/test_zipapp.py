"""The zipapp builds (scripts/test builds it first) and runs with nothing but python3."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_zipapp_version(pyz, tmp_path):
    r = subprocess.run([sys.executable, str(pyz), "--version"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HOME": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("hamachi ")
