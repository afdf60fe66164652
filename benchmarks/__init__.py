"""Runnable benchmarks: `make bench` (or `python -m benchmarks`) prints measured figures."""
