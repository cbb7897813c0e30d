"""Sliding anti-replay window in the style of RFC 6479.

The bitmap is a ring of 64-bit blocks. Advancing the window clears only the
blocks it moves past (never shifts the whole bitmap), so an in-order packet
costs O(1). With 64 blocks the window holds (64 - 1) * 64 = 4032 counters,
more than the 2048 the data plane needs for reordering under offloads.

`check()` is cheap and is called before decryption; `update()` is called only
after the packet authenticated, so forged packets never move the window.
"""

from __future__ import annotations

BLOCK_BITS = 64
BLOCKS = 64
WINDOW = (BLOCKS - 1) * BLOCK_BITS
_MASK = BLOCKS - 1


class ReplayWindow:
    __slots__ = ("last", "_ring")

    def __init__(self) -> None:
        self.last = -1
        self._ring = [0] * BLOCKS

    def check(self, counter: int) -> bool:
        """True if `counter` may be new (not too old, not seen)."""
        if counter > self.last:
            return True
        if counter + WINDOW <= self.last:
            return False
        return not (self._ring[(counter >> 6) & _MASK] >> (counter & 63)) & 1

    def advance_fast(self, counter: int) -> bool:
        """The common case in one step: `counter` is the newest yet and in the newest block.
        True if it was recorded; False means "use update()" (nothing changed)."""
        last = self.last
        if counter <= last or counter >> 6 != last >> 6 or last < 0:
            return False
        self._ring[(counter >> 6) & _MASK] |= 1 << (counter & 63)
        self.last = counter
        return True

    def update(self, counter: int) -> bool:
        """Record `counter`; False if it is a replay or too old."""
        ring = self._ring
        if counter > self.last:
            index = counter >> 6
            cur = self.last >> 6 if self.last >= 0 else -1
            diff = min(index - cur, BLOCKS)
            for i in range(1, diff + 1):
                ring[(cur + i) & _MASK] = 0
            self.last = counter
        elif counter + WINDOW <= self.last:
            return False
        idx = (counter >> 6) & _MASK
        bit = 1 << (counter & 63)
        if ring[idx] & bit:
            return False
        ring[idx] |= bit
        return True
