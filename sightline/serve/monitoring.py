"""Monitoring inside the service: the open-set decision on the request path, windows and alerts in the background,
and the same windows read back by `sightline monitor`.

On the request path (`Observer`, only when the bundle has a reference profile):
  - the chosen open-set score of each image (`monitor.ood`, computed for that score only) and its flag: the
    decision becomes "unknown" when the score is above the profile's threshold (unknown wins over review);
  - one `prediction_signals` row per prediction (projected features, calibrated softmax, score, flag, image
    statistics measured in the decode thread), written in the same transaction as the prediction (the requests of
    one micro-batch share it: `routes/predict.py`'s coalesced store step).

In the background (`Monitor`, an asyncio task of the app, the tests in a worker thread): every
`SIGHTLINE_MONITOR_EVERY` predictions or `SIGHTLINE_MONITOR_INTERVAL_MINUTES`, whichever comes first,
  - "recent": the last N predictions (shown; overlapping, so no alert counts them);
  - "block": each new full block of N predictions -> alert "drift";
  - "hour" / "day": each closed calendar period (UTC), a minute after it ends -> alerts "drift_hour" / "drift_day";
each window is tested against the profile (`monitor.windows.summarize`), kept in `monitor_windows`, set on the
Prometheus gauges and counted by its alert (`monitor.alerts.AlertState`, persisted in `monitor_alerts` in the
same transaction as the count, so a restart neither repeats nor loses an alert). Alert state is kept per model:
a row is keyed by (alert name, the profile fingerprint of the model whose windows it counts) and records the model's
name and version, so a service counts, restores and delivers only its own model's alerts (replicas of one model
share its rows and take turns), while /v1/monitor and the dashboard list every model's, and `sightline monitor
BUNDLE` tells the bundle's own from others'. Events then leave the alert's outbox through the sinks: the log
(WARNING `sightline.alerts`), Prometheus and, when configured, a signed webhook (`serve.webhooks`); an event stays
in the outbox until delivered, and is retried on the next run.

Example:
    >>> observer, why_not = open_observer(settings, bundle, engine)    # None + a one-line reason without profile
    >>> report = build_report("runs/demo", "sqlite:///runs/demo/bundle/sightline.db", window="block")
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.decision import UNKNOWN_LABEL, softmax
from sightline.errors import BundleError, SightlineError, UserInputError
from sightline.monitor.alerts import AlertState
from sightline.monitor.ood import OpenSetScorer
from sightline.monitor.reference import REFERENCE_FILE, ReferenceProfile, load_reference
from sightline.monitor.windows import (
    NO_LABEL,
    NOT_A_CLASS,
    PERIOD_SECONDS,
    Batch,
    blocks,
    jsonable,
    periods,
    summarize,
)

if TYPE_CHECKING:
    from sightline.bundle import Bundle
    from sightline.inference import Engine, Output
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.settings import Settings
    from sightline.storage.store import Store

__all__ = ["ADD_PROFILE", "ALERT_NAMES", "Scored", "Observer", "Monitor", "open_observer", "profile_fingerprint",
           "no_profile_message", "batch_from_rows", "build_report", "alert_views", "acknowledge_alert",
           "UnknownAlertError", "alert_words"]

log = logging.getLogger("sightline.monitor")
alert_log = logging.getLogger("sightline.alerts")

ADD_PROFILE = "run `sightline evaluate RUN --data DATA` to add or refresh it"
ALERT_NAMES = {"block": "drift", "hour": "drift_hour", "day": "drift_day"}
MAX_BLOCKS_PER_RUN = 10  # a long backlog (a first run on an old database) is caught up over several runs
MAX_PERIODS_BACK = 48  # calendar periods looked at when an alert has none counted yet
CLOSE_GRACE_S = 60.0  # a period is tested this long after it ends: predictions still being written have landed


def profile_fingerprint(folder: str | Path) -> str:
    """16 hex digits of the sha256 of `folder/reference.npz`: signals are compared only with the profile they
    were projected with."""
    h = hashlib.sha256()
    with open(Path(folder) / REFERENCE_FILE, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def no_profile_message(bundle_dir: str | Path) -> str:
    return (f"{bundle_dir} has no reference profile ({REFERENCE_FILE}), so there is no 'unknown' decision and no "
            f"drift monitoring; {ADD_PROFILE}.")


# --- the request path -----------------------------------------------------------------------------------------
@dataclass
class Scored:
    """A forward pass with each row's open-set score: what the micro-batcher hands a request when monitoring is on
    (the batch-result interface of `serve.batching`: `take`, `concat`)."""

    output: Output
    scores: np.ndarray  # (N,) the profile's chosen open-set score; NaN without one
    unknown: np.ndarray  # (N,) bool, score above the profile's threshold

    def __len__(self) -> int:
        return len(self.output)

    def take(self, index: Any) -> Scored:
        return Scored(self.output.take(index), self.scores[index], self.unknown[index])

    @staticmethod
    def concat(parts: Sequence[Scored]) -> Scored:
        from sightline.inference import Output

        return Scored(Output.concat([p.output for p in parts]), np.concatenate([p.scores for p in parts]),
                      np.concatenate([p.unknown for p in parts]))


class Observer:
    """Open-set score, "unknown" flag and the signals row of each prediction, from the forward pass's outputs."""

    def __init__(self, profile: ReferenceProfile, fingerprint: str) -> None:
        """UserInputError when the profile's chosen open-set score lacks what it reads (a damaged profile)."""
        self.profile = profile
        self.fingerprint = fingerprint
        choice = profile.ood_choice
        # prepared once: the k-NN bank widened to float32, the Mahalanobis matrices to float64 (ood.OpenSetScorer)
        self._scorer = None if choice is None else OpenSetScorer(
            choice.score, temperature=profile.temperature, energy_temperature=profile.energy_temperature,
            bank=profile.bank, mahalanobis=profile.mahalanobis)

    def score(self, output: Output) -> Scored:
        """The chosen open-set score of every row of a forward pass (equal to `ReferenceProfile.unknown`). The
        server calls it once per micro-batch in the inference thread: a k-NN score reads its whole bank (25 MB for
        5,000 x 1,280) per call, so one call for 16 images costs a third of 16 calls of one (measured 0.44 vs 1.4 ms
        an image)."""
        assert output.features is not None, "open_observer checks the backend gives features"
        n = len(output)
        if self._scorer is None:
            return Scored(output, np.full(n, np.nan), np.zeros(n, dtype=bool))
        scores = np.asarray(self._scorer(output.logits, output.features), dtype=np.float64)
        return Scored(output, scores, scores > self.profile.ood_choice.threshold)

    def infer(self, run: Callable[[np.ndarray], Output]) -> Callable[[np.ndarray], Scored]:
        """`run` (network inputs -> Output) followed by `score`: the micro-batcher's `infer` when monitoring."""
        return lambda x: self.score(run(x))

    def observe(self, scored: Scored | Output, stats: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray,
                                                                                         list[dict[str, Any]]]:
        """N scored rows and their N image statistics -> (scores, unknown flags, signal rows for
        `Store.add_predictions`). An unscored Output is scored here."""
        scored = scored if isinstance(scored, Scored) else self.score(scored)
        output = scored.output
        probs = softmax(output.logits, self.profile.temperature).astype(np.float32)
        projected = self.profile.project(output.features).astype(np.float16)
        rows = [{"profile": self.fingerprint, "projected": projected[i].tobytes(),
                 "probabilities": probs[i].tobytes(),
                 "ood_score": float(scored.scores[i]) if math.isfinite(scored.scores[i]) else None,
                 "unknown": bool(scored.unknown[i]), "image_stats": jsonable(stats[i])} for i in range(len(probs))]
        return scored.scores, scored.unknown, rows


def open_observer(settings: Settings, bundle: Bundle, engine: Engine) -> tuple[Observer | None, str | None]:
    """The request-path monitor for `bundle`, or (None, the one-line reason there is none). Serving works either
    way: a missing, damaged or mismatched profile only turns monitoring off."""
    if not settings.monitor:
        return None, "monitoring is off (SIGHTLINE_MONITOR=false)."
    try:
        profile = load_reference(bundle.path)
    except BundleError as exc:
        return None, f"monitoring is off: {exc}."
    if profile is None:
        return None, no_profile_message(bundle.path)
    if profile.classes != list(bundle.classes):
        return None, (f"monitoring is off: {bundle.path / REFERENCE_FILE} was built for classes {profile.classes}, "
                      f"the bundle has {list(bundle.classes)}; {ADD_PROFILE}.")
    try:
        engine.require_features()
    except BundleError as exc:
        return None, f"monitoring is off: {exc}"
    s = bundle.preprocessing.input_size
    probe = engine.run(np.zeros((1, 3, s, s), dtype=np.float32))  # also warms the session up
    d = None if probe.features is None else probe.features.shape[1]
    if d != profile.pca_mean.shape[0]:
        return None, (f"monitoring is off: the model gives {d}-dimensional features, {bundle.path / REFERENCE_FILE} "
                      f"has {profile.pca_mean.shape[0]}; {ADD_PROFILE}.")
    try:
        return Observer(profile, profile_fingerprint(bundle.path)), None
    except UserInputError as exc:  # the chosen score lacks its bank or Gaussians
        return None, f"monitoring is off: {bundle.path / REFERENCE_FILE}: {exc}; {ADD_PROFILE}."


# --- reading signals back -----------------------------------------------------------------------------------------
def _seconds(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def batch_from_rows(rows: Sequence[dict[str, Any]], profile: ReferenceProfile) -> Batch:
    """`Store.signal_rows` -> a `monitor.windows.Batch` (bytes decoded, reviewer labels as class indices)."""
    n, k, c = len(rows), len(profile.classes), profile.pca_components.shape[1]
    index = {name: i for i, name in enumerate(profile.classes)}
    return Batch(
        ids=np.array([r["prediction_id"] for r in rows], dtype=np.int64),
        times=np.array([_seconds(r["created"]) for r in rows], dtype=np.float64),
        probabilities=np.frombuffer(b"".join(r["probabilities"] for r in rows), dtype=np.float32).reshape(n, k),
        projected=np.frombuffer(b"".join(r["projected"] for r in rows), dtype=np.float16).reshape(n, c)
        .astype(np.float32),
        unknown=np.array([bool(r["unknown"]) for r in rows], dtype=bool),
        ood=np.array([np.nan if r["ood_score"] is None else r["ood_score"] for r in rows], dtype=np.float64),
        image_stats=[dict(r["image_stats"] or {}) for r in rows],
        # 'unknown' (the image shows none of the classes) -> NOT_A_CLASS: it was dropped, so a reviewer's verdict
        # on images of no trained class never reached measured accuracy
        reviewed=np.array([NOT_A_CLASS if r["reviewed_label"] == UNKNOWN_LABEL else
                           index.get(r["reviewed_label"], NO_LABEL) if r["reviewed_label"] else NO_LABEL for r in rows],
                          dtype=np.int64),
    )


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _detail(summary: dict[str, Any]) -> dict[str, Any]:
    """What an alert event says about the window that raised or cleared it."""
    return {k: summary.get(k) for k in ("kind", "key", "start", "end", "n", "p_value", "unknown_rate",
                                        "mean_confidence")} | {
        "expected_accuracy": (summary.get("expected_accuracy") or {}).get("expected_accuracy"),
        # False when the window drifted: the estimate assumes validation's calibration (monitor.windows)
        "expected_accuracy_reliable": (summary.get("expected_accuracy") or {}).get("reliable"),
        "significant_tests": sorted(name for name, t in summary.get("tests", {}).items() if t.get("significant")),
    }


def alert_words(detail: dict[str, Any], window_id: Any) -> str:
    """An alert event's window in one line an operator reads (the log printed the detail as a Python dict): which
    window, its p-value and the tests that found a change, its unknown rate, confidence and label-free accuracy."""
    def number(key: str, fmt: str) -> str | None:
        value = detail.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    parts = [f"{detail.get('kind') or 'window'} {detail.get('key') or window_id}"
             + (f" ({detail['n']} predictions)" if detail.get("n") else "")]
    if number("p_value", ".2g") is not None:
        tests = ", ".join(detail.get("significant_tests") or []) or "none"
        parts.append(f"p {number('p_value', '.2g')}, changed: {tests}")
    if number("unknown_rate", ".1%") is not None:
        parts.append(f"unknown {number('unknown_rate', '.1%')}")
    if number("mean_confidence", ".2f") is not None:
        parts.append(f"mean confidence {number('mean_confidence', '.2f')}")
    if number("expected_accuracy", ".2f") is not None:
        caveat = " (not reliable: the window drifted)" if detail.get("expected_accuracy_reliable") is False else ""
        parts.append(f"label-free accuracy {number('expected_accuracy', '.2f')}{caveat}")
    return "; ".join(parts)


# --- the background monitor ---------------------------------------------------------------------------------------
class Monitor:
    """Windows, alerts and sinks of one service (see the module docstring). `run_once` is blocking and
    thread-safe (call it from a worker thread); `start` / `close` run it as an asyncio task."""

    def __init__(self, *, store: Store, observer: Observer, settings: Settings, metrics: ServiceMetrics,
                 model: dict[str, str]) -> None:
        self.store = store
        self.observer = observer
        self.profile = observer.profile
        self.settings = settings
        self.metrics = metrics
        self.model = model
        # what each alert row records of the model counting its windows (the columns' widths, as predictions')
        self._owner = {"profile": observer.fingerprint, "name": str(model["name"])[:200],
                       "version": str(model["version"])[:100]}
        self._lock = threading.Lock()
        self._last_recent: int | None = None
        self._restored = False
        self._logged: set[str] = set()
        self._since_run = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._key = None
        if settings.alert_webhook_url and settings.alert_webhook_secret is not None:
            from sightline.serve.webhooks import parse_secret

            self._key = parse_secret(settings.alert_webhook_secret.get_secret_value())

    # --- windows ----------------------------------------------------------------------------------------------
    def _summarize(self, batch: Batch, **kw: Any) -> dict[str, Any]:
        s = self.settings
        return summarize(self.profile, batch, alpha=s.monitor_alpha, min_window=s.monitor_min_window,
                         permutations=s.monitor_permutations, **kw)

    def _keep(self, summary: dict[str, Any]) -> None:
        self.store.add_window(kind=summary["kind"], key=summary["key"], profile=self.observer.fingerprint,
                              n=summary["n"], significant=summary["significant"], result=summary)
        self._gauges(summary)

    def _gauges(self, summary: dict[str, Any]) -> None:
        m, kind = self.metrics, summary["kind"]
        m.monitor_window_size.labels(kind).set(summary["n"])
        for gauge, value in ((m.monitor_unknown_rate, summary.get("unknown_rate")),
                             (m.monitor_confidence, summary.get("mean_confidence")),
                             (m.monitor_accuracy, (summary.get("expected_accuracy") or {}).get("expected_accuracy"))):
            gauge.labels(kind).set(float("nan") if value is None else value)
        if summary.get("tested"):
            m.monitor_significant.labels(kind).set(1 if summary["significant"] else 0)
            m.monitor_p_value.labels(kind, "window").set(summary["p_value"])
            for name, test in summary["tests"].items():
                if test.get("ran") and test.get("p_value") is not None:
                    m.monitor_p_value.labels(kind, name).set(test["p_value"])

    def _count(self, name: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
        """Count one window in this model's alert `name` (persisted in the same transaction); the events it
        emitted."""
        k = self.settings.monitor_consecutive
        emitted: list[dict[str, Any]] = []

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            state = AlertState.from_json(current) if current else AlertState(name=name)
            state.fire_after = state.clear_after = k  # the setting in force now
            event = state.update(window_id=summary["key"], significant=summary["significant"],
                                 detail={**_detail(summary), "model": self.model})
            emitted[:] = [event] if event else []
            return jsonable(state.to_json())

        new = self.store.update_alert(name, change, model=self._owner)
        self.metrics.alert_active.labels(name).set(1 if new["active"] else 0)
        for event in emitted:
            self.metrics.alert_events.labels(name, event["kind"]).inc()
        return emitted

    def _restore(self) -> None:
        """Gauges from what the database holds, so a restarted service shows the last windows and alerts."""
        latest = self.store.latest_windows(self.observer.fingerprint)
        for summary in latest.values():
            self._gauges(summary)
        self._last_recent = latest.get("recent", {}).get("key")
        for name, state in self.store.alert_states(self.observer.fingerprint).items():
            self.metrics.alert_active.labels(name).set(1 if state.get("active") else 0)
        self._restored = True

    def run_once(self, now: float | None = None) -> list[dict[str, Any]]:
        """Test every window that is due (see the module docstring); returns the alert events emitted."""
        with self._lock:
            if not self._restored:
                self._restore()
            now = time.time() if now is None else now
            fp, size = self.observer.fingerprint, self.settings.monitor_window
            events: list[dict[str, Any]] = []
            states = self.store.alert_states(fp)  # this model's alerts only: another's windows are not ours
            after = (states.get(ALERT_NAMES["block"]) or {}).get("last_window")
            limit = size * MAX_BLOCKS_PER_RUN
            rows = self.store.signal_rows(fp, after_id=after, limit=limit)
            batch = batch_from_rows(rows, self.profile) if len(rows) >= size else None
            # the last N predictions: the tail of those rows when they reach the newest (one read and one decode
            # instead of two: a fifth of a run's time), else read on their own
            if batch is not None and len(rows) < limit:
                recent = batch.take(slice(len(batch) - size, len(batch)))
            else:
                newest = self.store.signal_rows(fp, newest=size)
                recent = batch_from_rows(newest, self.profile) if newest else None
            if recent is not None and int(recent.ids[-1]) != self._last_recent:
                self._keep(self._summarize(recent, kind="recent", key=int(recent.ids[-1])))
                self._last_recent = int(recent.ids[-1])

            if batch is not None:
                for part in blocks(len(batch), size):
                    window = batch.take(part)
                    summary = self._summarize(window, kind="block", key=int(window.ids[-1]))
                    self._keep(summary)
                    events += self._count(ALERT_NAMES["block"], summary)

            for unit in self.settings.calendar_units:
                seconds = PERIOD_SECONDS[unit]
                current = math.floor((now - CLOSE_GRACE_S) / seconds)  # open (or just closed): not yet
                last = (states.get(ALERT_NAMES[unit]) or {}).get("last_window")
                first = current - MAX_PERIODS_BACK if last is None else max(last + 1, current - MAX_PERIODS_BACK)
                if first >= current:
                    continue
                rows = self.store.signal_rows(fp, since=_at(first * seconds), until=_at(current * seconds))
                if not rows:
                    continue
                batch = batch_from_rows(rows, self.profile)
                batch = batch.take(np.argsort(batch.times, kind="stable"))  # periods need time order
                for number, part in periods(batch.times, unit):
                    summary = self._summarize(batch.take(part), kind=unit, key=number, start=number * seconds,
                                              end=(number + 1) * seconds)
                    self._keep(summary)
                    events += self._count(ALERT_NAMES[unit], summary)
            self.metrics.monitor_last_run.set(time.time())
            return events

    # --- sinks ------------------------------------------------------------------------------------------------
    def _payload(self, event: dict[str, Any], own: bool) -> dict[str, Any]:
        model = self.model if own else event.get("detail", {}).get("model")  # a row of no recorded model
        return {"type": f"sightline.alert.{event['kind']}",
                "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "data": {**event, "model": model}}

    async def deliver_pending(self) -> int:
        """Send every event in this model's alerts' outboxes through the sinks, oldest first per alert, and those
        of rows that recorded no model (written before alerts were kept per model: events raised before an
        upgrade are still delivered); an event is acknowledged (dropped from the outbox) once the log line is
        written and, when configured, the webhook answered 2xx. Returns how many events are still pending."""
        import anyio

        from sightline.serve.webhooks import deliver
        from sightline.storage.store import NO_PROFILE

        s = self.settings
        fp = self.observer.fingerprint
        own = await anyio.to_thread.run_sync(self.store.alert_states, fp)
        unowned = await anyio.to_thread.run_sync(self.store.alert_states, NO_PROFILE)
        left = 0
        for profile, name, state in [(fp, n, st) for n, st in sorted(own.items())] + [
                (NO_PROFILE, n, st) for n, st in sorted(unowned.items())]:
            blocked = False
            for event in state.get("pending", []):
                if blocked or self._stopping:
                    left += 1
                    continue
                if event["id"] not in self._logged:
                    alert_log.warning("alert %s %s (event %s): %s", name, event["kind"], event["id"],
                                      alert_words(event["detail"], event["window_id"]))
                    self._logged.add(event["id"])
                if self._key is not None and s.alert_webhook_url:
                    ok = await deliver(s.alert_webhook_url, self._key, event["id"], self._payload(event, profile == fp),
                                       attempts=s.alert_webhook_attempts, backoff_s=s.alert_webhook_backoff_s,
                                       timeout_s=s.alert_webhook_timeout_s, stop=lambda: self._stopping)
                    self.metrics.webhook_deliveries.labels("delivered" if ok else "failed").inc()
                    if not ok:
                        blocked, left = True, left + 1  # later events of this alert wait: order matters
                        continue
                await anyio.to_thread.run_sync(lambda: self.store.update_alert(name, _acknowledge(event["id"]),
                                                                               profile=profile))
        self.metrics.alert_outbox.set(left)
        return left

    # --- the background task ------------------------------------------------------------------------------------
    def notify(self, n: int) -> None:
        """`n` predictions were stored (call from the event loop); wakes the task every `monitor_every`."""
        self._since_run += n
        if self._wake is not None and self._since_run >= self.settings.monitor_every:
            self._wake.set()

    async def _run(self) -> None:
        import anyio

        self._since_run = 0
        try:
            await anyio.to_thread.run_sync(self.run_once)
            self.metrics.monitor_runs.labels("ok").inc()
        except (SightlineError, OSError, ValueError) as exc:  # a bad row or an unreachable database: next run
            self.metrics.monitor_runs.labels("error").inc()
            log.error("monitor run failed (%s: %s); serving continues, next run in %.0f min", type(exc).__name__,
                      exc, self.settings.monitor_interval_minutes, exc_info=exc)
        try:
            await self.deliver_pending()
        except (SightlineError, OSError) as exc:
            log.error("alert delivery failed (%s: %s); the events stay in the outbox", type(exc).__name__, exc,
                      exc_info=exc)

    async def _loop(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            await self._run()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.monitor_interval_minutes * 60)
            except TimeoutError:
                pass
            self._wake.clear()

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="sightline-monitor")

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop after the current run (webhook retries end early); cancel it after `timeout_s`."""
        if self._task is None:
            return
        self._stopping = True
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
        self._task = None

    # --- what /v1/monitor shows -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Latest window of each kind and every model's alerts, this model's first ("open_alerts": this model's
        raised ones, which POST .../ack acts on) (blocking: call from a worker thread)."""
        s = self.settings
        alerts = alert_views(self.store.alert_rows(), own=self.observer.fingerprint)
        return {
            "enabled": True,
            "message": None,
            "profile": {"fingerprint": self.observer.fingerprint, **jsonable(self.profile.summary())},
            "settings": {"window": s.monitor_window, "min_window": s.monitor_min_window, "every": s.monitor_every,
                         "interval_minutes": s.monitor_interval_minutes, "alpha": s.monitor_alpha,
                         "consecutive": s.monitor_consecutive, "calendar": s.calendar_units,
                         "webhook": bool(s.alert_webhook_url)},
            "windows": self.store.latest_windows(self.observer.fingerprint),
            "alerts": alerts,
            "open_alerts": [a["name"] for a in alerts if a["active"] and a["this_model"]],
        }


def _acknowledge(event_id: str):
    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        state = AlertState.from_json(current or {})
        state.acknowledge(event_id)
        return jsonable(state.to_json())

    return change


def alert_views(rows: list[dict[str, Any]], *, own: str | None = None) -> list[dict[str, Any]]:
    """`Store.alert_rows()` -> what /v1/monitor and the dashboard show of each alert of each model: raised or not,
    the windows that fired / cleared it, its streaks, the events still in its outbox, a person's acknowledgement
    ({by, at, note} or None), the model whose windows it counts ("profile": fingerprint, "model": {name,
    version}; None for a row that recorded no model) and "this_model": its profile is `own` (the serving
    model's). The serving model's alerts first, by name; then the others by name and profile."""
    views = [{"name": r["name"], "active": bool(st.get("active")), "fired_at": st.get("fired_at"),
              "cleared_at": st.get("cleared_at"), "significant_streak": st.get("significant_streak", 0),
              "clean_streak": st.get("clean_streak", 0), "fire_after": st.get("fire_after"),
              "last_window": st.get("last_window"), "pending": [e["id"] for e in st.get("pending", [])],
              "acknowledged": _shown_ack(st.get("acknowledged")), "profile": r["profile"], "model": r["model"],
              "this_model": own is not None and r["profile"] == own}
             for r in rows for st in [r["state"]]]
    return sorted(views, key=lambda v: (not v["this_model"], v["name"], v["profile"] or ""))


def _shown_ack(ack: dict[str, Any] | None) -> dict[str, Any] | None:
    """An acknowledgement as shown: its note with any half of a UTF-16 surrogate pair as U+FFFD. `acknowledge_alert`
    refuses such a note now, but one stored before made every /v1/monitor answer and dashboard a 500 (their text
    cannot be encoded as UTF-8) until the row was repaired by hand."""
    if not ack or not isinstance(ack.get("note"), str):
        return ack
    note = ack["note"].encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return {**ack, "note": note}


class UnknownAlertError(SightlineError):
    """Acknowledging an alert the database does not hold."""

    status_code = 404


_ALERT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # what an alert's name can be (drift, drift_hour, ...)
_PROFILE = re.compile(r"(?:[0-9a-f]{16})?")  # a profile fingerprint, or '' (a row that recorded no model)


def acknowledge_alert(store: Store, name: str, *, profile: str, by: str, note: str = "") -> dict[str, Any]:
    """A person (`by`: the API key's name) acknowledges raised alert `name` of the model whose profile
    fingerprint is `profile` ('': a row that recorded no model), with an optional note; persisted in
    `monitor_alerts` in one locked read-modify-write with the monitor's own updates, so a restart keeps it and
    a concurrent window count is not lost. Returns the alert as `alert_views` shows it. UnknownAlertError (404)
    when that model holds no alert of that name (nothing is written), AlertNotRaisedError (409) when the alert
    is not raised or is acknowledged already."""
    if not _ALERT_NAME.fullmatch(name) or not _PROFILE.fullmatch(profile):
        # no row can have them (and PostgreSQL refuses a NUL in a query: a 500 before), so nothing is read
        raise UnknownAlertError(f"no alert named {name[:64]!r} of the model with profile {profile[:16]!r}; GET "
                                "/v1/monitor lists the alerts.")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON can carry half of a UTF-16 surrogate pair ("\ud800"): stored in the alert, it made this answer and
        # every later GET /v1/monitor and dashboard a 500 (their text cannot be encoded), so nothing is written
        raise UserInputError(f"the note holds {note[exc.start]!r} at character {exc.start + 1}, half of a UTF-16 "
                             "surrogate pair, which is not text; send the note as UTF-8 text.") from None
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None:  # raising rolls the transaction back: no row is created for an unknown name
            whose = f"profile {profile}" if profile else "no recorded model"
            raise UnknownAlertError(f"no alert named {name!r} of this model ({whose}); GET /v1/monitor lists the "
                                    "alerts.")
        state = AlertState.from_json(current)
        state.acknowledge_raised(by=by, at=at, note=note)
        return jsonable(state.to_json())

    store.update_alert(name, change, profile=profile)
    row = next(r for r in store.alert_rows() if r["name"] == name and (r["profile"] or "") == profile)
    return alert_views([row], own=profile or None)[0]


# --- `sightline monitor` ------------------------------------------------------------------------------------------
def _report_alerts(rows: list[dict[str, Any]], fingerprint: str) -> dict[str, Any]:
    """`Store.alert_rows()` -> the report's "alerts" ({name: alert}, one a name: the bundle's own row first, then
    one that recorded no model, then another model's) and "other_alerts" (every row not there, each with its
    "name"; empty when each name has one row, as before alerts were kept per model)."""
    def view(row: dict[str, Any]) -> dict[str, Any]:
        st = row["state"]
        return ({k: st.get(k) for k in ("active", "fired_at", "cleared_at", "significant_streak", "last_window",
                                        "sequence")}
                | {"pending": len(st.get("pending", [])), "profile": row["profile"], "model": row["model"]})

    def rank(row: dict[str, Any]) -> tuple[int, str]:
        return (0 if row["profile"] == fingerprint else 1 if row["profile"] is None else 2, row["profile"] or "")

    alerts: dict[str, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda r: (r["name"], *rank(r))):
        if row["name"] in alerts:
            others.append({"name": row["name"], **view(row)})
        else:
            alerts[row["name"]] = view(row)
    return {"alerts": alerts, "other_alerts": others}


def _slice_members(store: Store) -> np.ndarray:
    """(m,) int64 ids of the predictions in the service's random slice (`sightline.storage.store.IN_SLICE`)."""
    from sqlalchemy import select

    from sightline.storage.store import IN_SLICE, KeptImage

    with store.engine.connect() as conn:
        return np.fromiter(conn.scalars(select(KeptImage.prediction_id).where(IN_SLICE)), dtype=np.int64)


def build_report(
    bundle_dir: str | Path,
    database_url: str,
    *,
    since: datetime | None = None,
    window: str = "block",
    size: int = 500,
    min_window: int = 50,
    alpha: float = 0.05,
    consecutive: int = 2,
    permutations: int = 200,
) -> dict[str, Any]:
    """Every window of the predictions monitored against `bundle_dir`'s reference profile (JSON-able): `window`
    "block" (consecutive blocks of `size`; a trailing partial block is shown, marked partial), "hour" or "day"
    (UTC; the current period is included, marked partial). A partial window is tested but, as in the service, not
    counted toward the replayed alert. Raises UserInputError when the bundle has no profile."""
    from sightline.bundle import load_bundle
    from sightline.storage.store import Store, safe_url

    if window not in ("block", "hour", "day"):
        raise UserInputError(f"--window {window!r}: use 'block', 'hour' or 'day'")
    if not 2 <= min_window <= size and window == "block":
        raise UserInputError(f"--min-window {min_window} must lie between 2 and --size {size}")
    bundle = load_bundle(bundle_dir)
    profile = load_reference(bundle.path)
    if profile is None:
        raise UserInputError(no_profile_message(bundle.path))
    fp = profile_fingerprint(bundle.path)
    since = since.astimezone(timezone.utc) if since is not None else None
    store = Store(database_url)
    try:
        total = store.count_predictions()
        recent = store.count_predictions(since) if since is not None else total
        groups = store.signal_summary(since)
        rows = store.signal_rows(fp, since=since)
        alert_rows = store.alert_rows()
        in_slice = _slice_members(store)
    finally:
        store.close()
    report: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"path": str(bundle.path), "name": bundle.name, "version": bundle.version,
                   "classes": list(bundle.classes)},
        "profile": {"fingerprint": fp, **jsonable(profile.summary())},
        "database": safe_url(database_url),
        "since": since.isoformat(timespec="seconds") if since else None,
        "window": {"kind": window, "size": size if window == "block" else None, "min_window": min_window,
                   "alpha": alpha, "consecutive": consecutive, "permutations": permutations},
        "n_predictions": total,
        "n_monitored": len(rows),
        "other_profiles": {k: v["n"] for k, v in groups.items() if k != fp},
        # by name: this bundle's alert, else one the service recorded no model for, else another model's; every
        # other row in "other_alerts" ("profile" / "model": the model whose windows it counts; None: not recorded)
        **_report_alerts(alert_rows, fp),
        "windows": [],
        "messages": [],
    }
    if total == 0:
        report["messages"].append("the database holds no predictions yet: serve the bundle and send images, then "
                                  "run this again.")
    elif recent == 0:  # it said "none of the {total} predictions since ... was monitored" (they all were, before)
        report["messages"].append(f"no predictions since {report['since']}: all {total} in the database are older; "
                                  "pass an earlier --since.")
    elif not rows:
        others = sum(report["other_profiles"].values())
        report["messages"].append(
            f"none of the {recent} predictions{' since ' + report['since'] if since else ''} was monitored with this "
            f"bundle's reference profile ({fp})"
            + (f"; {others} were recorded against another profile (another bundle version)" if others else
               "; they were served without a profile or with SIGHTLINE_MONITOR=false") + ".")
    if not rows:
        return report
    batch = batch_from_rows(rows, profile)
    batch.in_slice = np.isin(batch.ids, in_slice)
    if window == "block":
        parts = [(int(batch.ids[p][-1]), p, None, None) for p in blocks(len(batch), size)]
        tail = len(batch) % size
        if tail:
            parts.append((int(batch.ids[-1]), slice(len(batch) - tail, len(batch)), None, None))
    else:
        seconds = PERIOD_SECONDS[window]
        batch = batch.take(np.argsort(batch.times, kind="stable"))  # periods need time order
        parts = [(number, p, number * seconds, (number + 1) * seconds) for number, p in periods(batch.times, window)]
    state = AlertState(name="replay", fire_after=consecutive, clear_after=consecutive)
    now = time.time()
    for key, part, start, end in parts:
        summary = summarize(profile, batch.take(part), kind=window, key=key, start=start, end=end, alpha=alpha,
                            min_window=min_window, permutations=permutations)
        summary["partial"] = (window == "block" and summary["n"] < size) or (end is not None and end > now)
        # a window still filling is shown and tested, but the replay counts it toward the alert only once complete,
        # as the service does (it fired the replay's alert on a trailing block of a few predictions)
        event = None if summary["partial"] else state.update(window_id=key, significant=summary["significant"])
        summary["alert_active"] = state.active
        summary["alert_event"] = event["kind"] if event else None
        report["windows"].append(summary)
    untested = [w for w in report["windows"] if not w["tested"]]
    if untested:
        report["messages"].append(
            f"{len(untested)} of {len(report['windows'])} windows have fewer than {min_window} predictions and were "
            "not tested.")
    return report
