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
        # Monitoring: one series per window kind ("recent", "block", "hour", "day") of its latest tested window.
        self.monitor_p_value = Gauge(
            "sightline_monitor_p_value",
            'Latest window\'s p-value per drift test (test="window": Bonferroni over the driving tests).',
            ["window", "test"], registry=self.registry,
        )
        self.monitor_significant = Gauge(
            "sightline_monitor_window_significant", "1 when the latest window of this kind drifted, else 0.",
            ["window"], registry=self.registry,
        )
        self.monitor_window_size = Gauge(
            "sightline_monitor_window_predictions", "Predictions in the latest window of this kind.", ["window"],
            registry=self.registry,
        )
        self.monitor_unknown_rate = Gauge(
            "sightline_monitor_unknown_rate", "Share of the latest window's predictions flagged unknown.",
            ["window"], registry=self.registry,
        )
        self.monitor_confidence = Gauge(
            "sightline_monitor_mean_confidence", "Mean calibrated top-1 probability in the latest window.",
            ["window"], registry=self.registry,
        )
        self.monitor_accuracy = Gauge(
            "sightline_monitor_estimated_accuracy",
            "Label-free expected accuracy (mean calibrated top-1 probability) of the latest window.", ["window"],
            registry=self.registry,
        )
        self.alert_active = Gauge(
            "sightline_monitor_alert_active", "1 while the alert is raised, else 0.", ["alert"],
            registry=self.registry,
        )
        self.alert_events = Counter(
            "sightline_monitor_alert_events_total", "Alert events emitted, by alert and kind (fired, cleared).",
            ["alert", "kind"], registry=self.registry,
        )
        self.alert_outbox = Gauge(
            "sightline_monitor_alert_outbox", "Alert events not yet delivered to every sink.", registry=self.registry
        )
        self.webhook_deliveries = Counter(
            "sightline_monitor_webhook_deliveries_total", "Webhook deliveries by outcome (delivered, failed).",
            ["outcome"], registry=self.registry,
        )
        self.monitor_runs = Counter(
            "sightline_monitor_runs_total", "Background monitor runs by outcome (ok, error).", ["outcome"],
            registry=self.registry,
        )
        self.monitor_last_run = Gauge(
            "sightline_monitor_last_run_timestamp_seconds", "When the monitor last finished a run (Unix time).",
            registry=self.registry,
        )
        # Shadow mode (serve --shadow): the challenger's background scoring. NaN until it has scored something.
        self.shadow_agreement = Gauge(
            "sightline_shadow_agreement_rate",
            "Share of the challenger's stored shadow predictions whose label equals the champion's.",
            registry=self.registry,
        )
        self.shadow_agreement.set(float("nan"))
        self.shadow_requests = Counter(
            "sightline_shadow_requests_total",
            "Sampled predict requests by outcome: scored, dropped (queue full or shutting down), failed.",
            ["outcome"], registry=self.registry,
        )
        self.shadow_predictions = Counter(
            "sightline_shadow_predictions_total", "Predictions the challenger scored and stored.",
            registry=self.registry,
        )
        self.shadow_pending = Gauge(
            "sightline_shadow_pending_requests", "Sampled requests waiting for the challenger.", registry=self.registry
        )
