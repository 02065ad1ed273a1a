"""Prometheus metrics of one server. Each app has its own registry, so two servers in one
process (tests) never mix their counts; labels come from route templates, never raw URLs, so a
scanner probing random paths cannot blow up the number of series."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("modelcycle_requests_total", "HTTP requests", ["route", "status"], registry=reg)
        self.latency = Histogram(
            "modelcycle_request_latency_seconds",
            "Time from request to response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("modelcycle_images_total", "Images classified", ["model"], registry=self.registry)
        self.batch_size = Histogram(
            "modelcycle_batch_size", "Images per model call", ["model"], buckets=BATCH_BUCKETS, registry=reg
        )
        self.queue_depth = Gauge("modelcycle_queue_depth", "Images waiting for the model", ["model"], registry=reg)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LMMetrics:
    """A language model server's own series, in the registry of the app's ``ServeMetrics``:
    tokens read and made, requests waiting, and the continuous batch's timings and sizes."""

    def __init__(self, metrics: ServeMetrics):
        reg = metrics.registry
        self.tokens = Counter(
            "modelcycle_lm_tokens_total", "Tokens read and generated", ["model", "kind"], registry=reg
        )
        self.pending = Gauge("modelcycle_lm_pending_requests", "Requests queued or generating", ["model"], registry=reg)
        self.time_to_first_token = Histogram(
            "modelcycle_lm_time_to_first_token_seconds",
            "From a request joining the queue to its first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.time_per_output_token = Histogram(
            "modelcycle_lm_time_per_output_token_seconds",
            "Per answer, the time from its first token to its last over the tokens after the first",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "modelcycle_lm_batch_size", "Sequences per decoding step", ["model"], buckets=BATCH_BUCKETS, registry=reg
        )


class MetricsMiddleware:
    """Pure ASGI, so it sees every response, the ones our error handlers make included."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
