"""Tiny random Wan checkpoints in the official release layouts, for tests and the perf smoke runs (no official
weights can be downloaded here)."""
