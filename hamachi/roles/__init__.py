"""Composition roots: each role wires config, io and proto together."""
