"""Composition root for the relay role: config + io + proto wired together."""

from __future__ import annotations


def run(settings) -> int:
    raise NotImplementedError("the relay role is being built")
