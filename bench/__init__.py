"""Benchmarks: scripts that measure workerflow and its peers side by side (see bench/README.md)."""
