"""Debian's Chromium against a running farm: ``pytest -m browser``."""
