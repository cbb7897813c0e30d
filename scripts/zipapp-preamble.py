"""Run by the .pyz before hamachi starts: remove old extracted builds from the shiv cache.

Each build extracts to ROOT/hamachi.pyz_<build id>/. Other builds not used for KEEP_DAYS go
(a daemon of the previous version may still run from a recent one, so those stay).
"""
import os
import shutil
import sys
import time
from pathlib import Path

KEEP_DAYS = 7
here = next((Path(p) for p in sys.path if "hamachi.pyz_" in p), None)
if here is not None:
    current = next(p for p in [here, *here.parents] if p.name.startswith("hamachi.pyz_"))
    os.utime(current)  # in use: this one is recent
    cutoff = time.time() - KEEP_DAYS * 86400
    for old in current.parent.glob("hamachi.pyz_*"):
        if old.is_dir() and old != current and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
            Path(current.parent, f".{old.name}_lock").unlink(missing_ok=True)
