"""The ``llama-farm`` command: one CLI over the services, dev mode, and the simulator."""
