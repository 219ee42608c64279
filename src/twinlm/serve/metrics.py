"""Prometheus collectors, one registry per app (so several apps in one process, as in tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """requests, latency, requests in progress, batch sizes, queue depth, active streams and tokens generated."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("twinlm_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram("twinlm_request_latency_seconds", "Time to answer (to the first byte for streams)",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("twinlm_batch_size", "Inputs per forward batch", ["model", "op"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("twinlm_queue_depth", "Requests waiting", ["model", "op"], registry=r)
        self.active_streams = Gauge("twinlm_active_streams", "Sequences in the decoding loop", ["model"], registry=r)
        self.tokens = Counter("twinlm_tokens_generated", "Tokens generated", ["model"], registry=r)
        self.rejected = Counter("twinlm_rejected", "Requests refused because a queue was full", ["model", "op"],
                                registry=r)
        # HTTP requests in progress, kept by the app's middleware; a plain int because the batchers read it on
        # every wake-up, published through a gauge read at scrape time.
        self.in_flight = 0
        Gauge("twinlm_requests_in_progress", "HTTP requests in progress", registry=r).set_function(
            lambda: self.in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)
