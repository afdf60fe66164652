"""The coordinator's commands: ``llama-farm workers``, ``api-keys`` and ``broker``."""
