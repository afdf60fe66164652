"""Pure logic, in memory: ``pytest -m unit``."""
