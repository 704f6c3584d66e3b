"""Benchmarks: rerunnable measurements behind every speed and memory figure in docs/benchmarks.md."""
