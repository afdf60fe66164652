"""Prometheus metrics at ``/metrics``.

Counts that the database already knows (queue depth, jobs by state, workers online) are
read from it at scrape time, so they are right after a restart and across several
coordinator processes. Latencies are observed in this process as they happen.
"""

from collections.abc import Iterator

import peewee as pw
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from coordinator.jobs import reports
from coordinator.jobs.states import FINAL, JobState
from farm_protocol.chat import MessageView
from farm_runtime.metrics import add_process_collectors

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _FromDatabase(Collector):
    def __init__(self, db: pw.Database, grace_s: float) -> None:
        self.db = db
        self.grace_s = grace_s

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = reports.queue_stats(self.db, self.grace_s, totals=False)
        depth = GaugeMetricFamily("farm_queue_depth", "Jobs waiting for a worker", labels=["model"])
        for model, queue in stats.by_model.items():
            depth.add_metric([model], queue.queued)
        yield depth
        oldest = GaugeMetricFamily(
            "farm_queue_oldest_wait_seconds",
            "How long the oldest queued job has waited",
            labels=["model"],
        )
        for model, queue in stats.by_model.items():
            oldest.add_metric([model], queue.oldest_wait_s)
        yield oldest
        yield GaugeMetricFamily("farm_jobs_running", "Jobs held by a worker", value=stats.running)
        yield GaugeMetricFamily(
            "farm_workers_online", "Workers online and heartbeating", value=stats.workers_online
        )
        yield GaugeMetricFamily(
            "farm_workers_quarantined",
            "Online workers kept from new jobs after repeated failures",
            value=stats.workers_quarantined,
        )
        yield GaugeMetricFamily(
            "farm_slots_free", "Free job slots on available workers", value=stats.slots_free
        )


class Metrics:
    def __init__(self, db: pw.Database, grace_s: float) -> None:
        self.registry = CollectorRegistry()
        self.queue_wait = Histogram(
            "farm_queue_wait_seconds",
            "Time from a request being queued to its job being assigned",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "farm_time_to_first_token_seconds",
            "Time from a request being queued to its first token reaching the coordinator",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.shed = Counter(
            "farm_requests_refused",
            "Requests refused at once because the farm was busy",
            ["reason"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "farm_prompt_tokens",
            "Prompt tokens of the replies that succeeded, as their models counted them",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "farm_completion_tokens",
            "Tokens generated in the replies that succeeded",
            ["model"],
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "farm_jobs_finished",
            "Jobs this coordinator ended, by final state (sum over coordinators)",
            ["state"],
            registry=self.registry,
        )
        for state in FINAL:
            self.jobs_finished.labels(state.value)  # every state from the start, at 0
        self.registry.register(_FromDatabase(db, grace_s))
        add_process_collectors(self.registry)

    def job_ended(self, state: JobState) -> None:
        self.jobs_finished.labels(state.value).inc()

    def count_tokens(self, reply: MessageView) -> None:
        """A reply that succeeded here (each is handled by one coordinator: sum them)."""
        model = reply.model or ""
        self.prompt_tokens.labels(model).inc(reply.prompt_tokens or 0)
        self.completion_tokens.labels(model).inc(reply.completion_tokens or 0)

    def render(self) -> bytes:
        """The exposition text; reads the database, so call it in the database thread."""
        return generate_latest(self.registry)
