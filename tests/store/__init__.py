"""Real SQLite and PostgreSQL, no broker: ``pytest -m store``."""
