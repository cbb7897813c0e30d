"""Replay window properties against a simple model (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hamachi.crypto.replay import WINDOW, ReplayWindow


class Model:
    """Accept a counter once, unless it is WINDOW or more behind the highest seen."""

    def __init__(self):
        self.seen: set[int] = set()
        self.top = -1

    def update(self, c: int) -> bool:
        if c + WINDOW <= self.top or c in self.seen:
            return False
        self.seen.add(c)
        self.top = max(self.top, c)
        return True


def test_window_is_at_least_2048():
    assert WINDOW >= 2048


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20000), max_size=400))
def test_matches_model(counters):
    w, m = ReplayWindow(), Model()
    for c in counters:
        expect = m.update(c)
        assert w.check(c) == expect or not expect  # check may say "maybe" only when update agrees
        assert w.update(c) == expect


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=400))
def test_fast_path_then_update_matches_model(counters):
    """The receive path's order: advance_fast, and update only where it declined."""
    w, m = ReplayWindow(), Model()
    for c in counters:
        assert (w.advance_fast(c) or w.update(c)) == m.update(c)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 10**6))
def test_any_reordering_within_2048_is_accepted_once(seed, base):
    order = [base + i for i in range(2048)]
    random.Random(seed).shuffle(order)
    w = ReplayWindow()
    assert all(w.update(c) for c in order)
    assert not any(w.check(c) for c in order)


def test_far_jump_clears_the_window():
    w = ReplayWindow()
    assert w.update(5)
    assert w.update(10**9)
    assert not w.update(5)  # far too old now
    assert w.update(10**9 - 100)
    assert not w.update(10**9 - 100)
