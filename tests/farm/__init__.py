"""A real broker, services in-process or as processes: ``pytest -m farm``."""
