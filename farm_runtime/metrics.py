"""What every service's ``/metrics`` has besides its own: the process (CPU, memory, open
files), the garbage collector and the Python version, as Prometheus' client gives them."""

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector


def add_process_collectors(registry: CollectorRegistry) -> None:
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
