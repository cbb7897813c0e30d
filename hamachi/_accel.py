"""The one switch between the C fast path and its pure-Python twins.

`fast` is the `hamachi._fastpath` extension module (built by `pip install` from
hamachi/_fastpath.c with gcc and OpenSSL's headers), or None when it is not built
or when HAMACHI_NO_C=1 forces the pure-Python twins. Both produce the same bytes:
the wire format is the twins', and the tests run both against the same vectors.
"""

from __future__ import annotations

import os

fast = None
why_not = "disabled by HAMACHI_NO_C=1"
if os.environ.get("HAMACHI_NO_C") != "1":
    try:
        from hamachi import _fastpath as fast  # noqa: F401
        why_not = ""
    except ImportError as e:  # not built here (no compiler or no OpenSSL headers at install time)
        why_not = f"not built ({e})"

__all__ = ["fast", "why_not"]
