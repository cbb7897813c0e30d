"""Composition root for the server role: config + io + proto wired together."""

from __future__ import annotations


def run(settings) -> int:
    raise NotImplementedError("the server role is being built")
