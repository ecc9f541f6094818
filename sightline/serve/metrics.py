"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sightline_http_requests_total", "HTTP requests by route and status.", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sightline_http_request_seconds", "Request latency by route.", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.predictions = Counter(
            "sightline_predictions_total", "Answered predictions by label and decision.", ["label", "decision"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sightline_inference_batch_size", "Images per inference call (micro-batching).", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.pending = Gauge(
            "sightline_batcher_pending_images", "Images waiting for or in inference.", registry=self.registry
        )
        self.rejected = Counter(
            "sightline_rejected_inputs_total", "Requests refused for bad input, by status.", ["status"],
            registry=self.registry,
        )
