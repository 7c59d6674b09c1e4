"""Prometheus metrics, named as Triton names them where the meaning is the same.

Counters (exposed with Prometheus' ``_total`` suffix):
``nv_inference_request_success`` / ``nv_inference_request_failure`` (requests,
failures labelled by reason), ``nv_inference_count`` (images inferred),
``nv_inference_exec_count`` (model executions; count / exec_count is the mean
batch size), and the cumulative microseconds ``nv_inference_request_duration_us``,
``nv_inference_queue_duration_us``, ``nv_inference_compute_infer_duration_us``.
Also ``nv_inference_pending_request_count`` (queued now), ``graft_http_requests_in_flight``,
``graft_model_instances`` (instances by state: live, busy, replacing, failed) and a latency
histogram ``graft_request_duration_seconds``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from graft.runtime.server.instances import BatchStats

_MODEL = ("model", "version")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter = lambda name, doc, labels=_MODEL: Counter(name, doc, labels, registry=self.registry)  # noqa: E731
        self.success = counter("nv_inference_request_success", "Successful inference requests")
        self.failure = counter("nv_inference_request_failure", "Failed inference requests",
                               (*_MODEL, "reason"))
        self.inferences = counter("nv_inference_count", "Images inferred (batch rows)")
        self.executions = counter("nv_inference_exec_count", "Model executions (batches)")
        self.request_us = counter("nv_inference_request_duration_us",
                                  "Cumulative end-to-end request time in microseconds")
        self.queue_us = counter("nv_inference_queue_duration_us",
                                "Cumulative time requests waited in the queue in microseconds")
        self.compute_us = counter("nv_inference_compute_infer_duration_us",
                                  "Cumulative model execution time in microseconds")
        self.pending = Gauge("nv_inference_pending_request_count", "Requests queued now",
                             _MODEL, registry=self.registry)
        self.in_flight = Gauge("graft_http_requests_in_flight", "HTTP requests being answered now",
                               registry=self.registry)
        self.instances = Gauge("graft_model_instances", "Model instances by state (live, busy, replacing, "
                               "failed)", (*_MODEL, "state"), registry=self.registry)
        self.latency = Histogram("graft_request_duration_seconds", "End-to-end request latency",
                                 _MODEL, registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

    def batch_observer(self, name: str, version: str):
        """A callback for the batcher: counts one execution and its rows."""
        def observe(stats: BatchStats) -> None:
            self.executions.labels(name, version).inc()
            self.inferences.labels(name, version).inc(stats.items)
            self.compute_us.labels(name, version).inc(stats.compute_s * 1e6 * stats.requests)
            self.queue_us.labels(name, version).inc(sum(stats.queue_s) * 1e6)
        return observe

    def watch_instances(self, name: str, version: str, pool) -> None:
        """Instance counts by state, read from ``pool`` whenever /metrics is rendered."""
        def counter(state):
            if state == "busy":
                return lambda: sum(i.busy and i.state == "live" for i in pool.instances)
            return lambda: sum(i.state == state for i in pool.instances)
        for state in ("live", "busy", "replacing", "failed"):
            self.instances.labels(name, version, state).set_function(counter(state))

    def request_done(self, name: str, version: str, seconds: float, reason: str | None) -> None:
        if reason is None:
            self.success.labels(name, version).inc()
        else:
            self.failure.labels(name, version, reason).inc()
        self.request_us.labels(name, version).inc(seconds * 1e6)
        self.latency.labels(name, version).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
