"""The server's Prometheus metrics, in a registry of its own (two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# request latencies: health checks and cached slices take milliseconds, uploads of big scans seconds
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """requests (method, route template, status), latency per route, queue length, jobs by state (read from the
    store at each scrape), job durations, classify batch sizes in patches and in requests."""

    def __init__(self, queue_length, job_counts):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("noduleflow_http_requests", "HTTP requests answered", ("method", "route", "status"), registry=r)
        self.latency = Histogram("noduleflow_http_request_duration_seconds", "Time to answer an HTTP request", ("method", "route"),
                                 buckets=_LATENCY, registry=r)
        self.queue = Gauge("noduleflow_queue_length", "Scan jobs waiting for the worker", registry=r)
        self.queue.set_function(queue_length)
        self.job_seconds = Histogram("noduleflow_job_duration_seconds", "Wall time of a finished scan job (queued to done)",
                                     ("status",), buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800), registry=r)
        self.batch_patches = Histogram("noduleflow_classify_batch_size", "Patches per classifier call of /v1/classify",
                                       buckets=_BATCH, registry=r)
        self.batch_requests = Histogram("noduleflow_classify_batch_requests", "Requests answered by one classifier call",
                                        buckets=_BATCH, registry=r)
        self.rejected = Counter("noduleflow_uploads_rejected", "Uploads refused, by HTTP status", ("status",), registry=r)
        r.register(_JobStates(job_counts))

    def on_batch(self, patches: int, requests: int) -> None:
        self.batch_patches.observe(patches)
        self.batch_requests.observe(requests)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _JobStates:
    """`noduleflow_jobs{state}`: counted when scraped, so it is right after a restart or a DELETE."""

    def __init__(self, counts):
        self.counts = counts

    def collect(self):
        family = GaugeMetricFamily("noduleflow_jobs", "Scan jobs by state", labels=["state"])
        for state, n in self.counts().items():
            family.add_metric([state], n)
        yield family

    def describe(self):
        return []
