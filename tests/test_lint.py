"""The code stays lint-clean (ruff, configured in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    files = ["hamachi", "tests", "scripts/bench", "scripts/bench-control", "scripts/bench-birthday", "scripts/lab", "scripts/tour.py",
             "scripts/build-zipapp"]
    r = subprocess.run([ruff, "check", "--no-cache", *files], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
