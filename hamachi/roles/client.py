"""Composition root for the client role: config + io + proto wired together."""

from __future__ import annotations


def run(settings) -> int:
    raise NotImplementedError("the client role is being built")
