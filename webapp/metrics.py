"""The webapp's Prometheus metrics at ``/metrics``, for a scraper that sends
``Authorization: Bearer FARM_METRICS_TOKEN`` (the webapp faces the internet: with no
token set, there are none to read).

Counts are kept as plain integers where they happen (every MQTT message, every API
request: a chunk's path must stay cheap) and read at scrape time, with what the bridge
holds now and the process's own collectors."""

import hmac
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from farm_runtime.metrics import add_process_collectors
from webapp.bridge import Bridge
from webapp.coordinator_client import CoordinatorClient


class ApiCounts:
    """Requests of the APIs for programs, by API and status."""

    def __init__(self) -> None:
        self.by: Counter[tuple[str, int]] = Counter()

    def count(self, api: str, status: int) -> None:
        self.by[(api, status)] += 1


class _Live(Collector):
    def __init__(self, bridge: Bridge, coordinator: CoordinatorClient, api: ApiCounts) -> None:
        self.bridge = bridge
        self.coordinator = coordinator
        self.api = api

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        b = self.bridge
        yield GaugeMetricFamily(
            "farm_webapp_watchers", "Browsers and API requests watching a thread here", b.browsers()
        )
        yield GaugeMetricFamily(
            "farm_webapp_subscriptions",
            "MQTT subscriptions held for what is watched here",
            len(b.interest.topics()),
        )
        yield GaugeMetricFamily(
            "farm_webapp_broker_connected", "1 while connected to the broker", b.ready.is_set()
        )
        yield GaugeMetricFamily(
            "farm_webapp_coordinators_live",
            "Coordinators passing their health check",
            len(self.coordinator.live()),
        )
        received = CounterMetricFamily(
            "farm_webapp_mqtt_messages",
            "MQTT messages received, by kind (dropped: refused as malformed or spoofed)",
            labels=["kind"],
        )
        for kind in ("thread", "chunk", "progress", "dropped"):
            received.add_metric([kind], b.received[kind])
        yield received
        requests = CounterMetricFamily(
            "farm_webapp_api_requests",
            "Requests of the OpenAI and Ollama APIs, by API and HTTP status",
            labels=["api", "status"],
        )
        for (api, status), count in sorted(self.api.by.items()):
            requests.add_metric([api, str(status)], count)
        yield requests


class WebappMetrics:
    def __init__(self, bridge: Bridge, coordinator: CoordinatorClient, token: str) -> None:
        self.token = token
        self.api = ApiCounts()
        self.registry = CollectorRegistry()
        self.registry.register(_Live(bridge, coordinator, self.api))
        add_process_collectors(self.registry)

    def allowed(self, authorization: str) -> bool:
        given = authorization.removeprefix("Bearer ").strip()
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    def render(self) -> bytes:
        return generate_latest(self.registry)
