"""Alert hysteresis: fire after K consecutive significant windows, clear after K consecutive clean ones.

The state is a plain dataclass that round-trips through JSON, so the server can persist it after every window:

    state = AlertState.from_json(saved) if saved else AlertState(name="drift")
    event = state.update(window_id=last_prediction_id, significant=result.significant)
    save(state.to_json())              # persist first ...
    for ev in state.pending: send(ev); state.acknowledge(ev["id"]); save(state.to_json())   # ... then deliver

A restart neither repeats nor loses an alert: a window already counted (window_id not above `last_window`) is
ignored, and an event stays in `pending` until acknowledged, so one lost in a crash is sent again after the
restart with the same `id` (use it as the webhook-id: receivers drop duplicates).

A person acknowledges a raised alert with `acknowledge_raised(by=..., at=..., note=...)` (who: the API key's name;
when: ISO 8601 UTC; an optional note). This is not the outbox's `acknowledge(event_id)`, which a sink calls when
it delivered an event. The acknowledgement is part of the persisted state, so a restart keeps it, and it is
dropped when the alert clears: the next time the alert fires, it is unacknowledged again.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sightline.errors import SightlineError, UserInputError

__all__ = ["AlertState", "AlertNotRaisedError", "NOTE_MAX_CHARS"]

NOTE_MAX_CHARS = 500  # an acknowledgement's note: a line or two, not a report


class AlertNotRaisedError(SightlineError):
    """Acknowledging an alert that is not raised, or was acknowledged already."""

    status_code = 409


@dataclass
class AlertState:
    name: str  # what is watched, e.g. "drift" or "unknown_rate"
    fire_after: int = 2  # consecutive significant windows that raise the alert
    clear_after: int = 2  # consecutive clean windows that clear it
    active: bool = False
    significant_streak: int = 0
    clean_streak: int = 0
    last_window: int | None = None  # id of the last window counted (ids must increase)
    fired_at: int | None = None  # window id that raised the current (or last) alert
    cleared_at: int | None = None
    sequence: int = 0  # events emitted so far; event ids are f"{name}-{sequence}"
    pending: list[dict[str, Any]] = field(default_factory=list)  # events not yet acknowledged by a sink
    # a person saw the raised alert: {"by": API key name, "at": ISO 8601 UTC, "note": str}; None once it clears
    acknowledged: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.fire_after < 1 or self.clear_after < 1:
            raise UserInputError(f"alert {self.name!r}: fire_after and clear_after must be at least 1")

    def update(self, *, window_id: int, significant: bool | None, detail: Mapping[str, Any] | None = None
               ) -> dict[str, Any] | None:
        """Count one window. `significant` None means the window was not tested (too small): it breaks
        neither streak. Returns the event emitted ({id, name, kind "fired"|"cleared", window_id, detail}) or
        None. A window_id not above `last_window` was counted already and changes nothing."""
        if self.last_window is not None and window_id <= self.last_window:
            return None
        self.last_window = int(window_id)
        if significant is None:
            return None
        if significant:
            self.significant_streak += 1
            self.clean_streak = 0
            if not self.active and self.significant_streak >= self.fire_after:
                self.active, self.fired_at = True, int(window_id)
                return self._emit("fired", window_id, detail)
        else:
            self.clean_streak += 1
            self.significant_streak = 0
            if self.active and self.clean_streak >= self.clear_after:
                self.active, self.cleared_at = False, int(window_id)
                self.acknowledged = None  # the next firing needs a person's attention again
                return self._emit("cleared", window_id, detail)
        return None

    def _emit(self, kind: str, window_id: int, detail: Mapping[str, Any] | None) -> dict[str, Any]:
        self.sequence += 1
        event = {"id": f"{self.name}-{self.sequence}", "name": self.name, "kind": kind, "window_id": int(window_id),
                 "detail": dict(detail or {})}
        self.pending.append(event)
        return event

    def acknowledge(self, event_id: str) -> bool:
        """Drop a delivered event from `pending`; False when it was not pending (already acknowledged)."""
        before = len(self.pending)
        self.pending = [e for e in self.pending if e["id"] != event_id]
        return len(self.pending) < before

    def acknowledge_raised(self, *, by: str, at: str, note: str = "") -> dict[str, Any]:
        """Record that the person `by` (the API key's name, never a client field) saw the raised alert at `at`
        (ISO 8601 UTC), with an optional `note`; returns the acknowledgement. AlertNotRaisedError (409) when the
        alert is not raised or someone acknowledged it already; UserInputError for a note over NOTE_MAX_CHARS."""
        note = note.strip()
        if len(note) > NOTE_MAX_CHARS:
            raise UserInputError(f"the note has {len(note)} characters; keep it to {NOTE_MAX_CHARS} at most.")
        if not self.active:
            raise AlertNotRaisedError(f"alert {self.name!r} is not raised; there is nothing to acknowledge.")
        if self.acknowledged is not None:
            raise AlertNotRaisedError(f"alert {self.name!r} was acknowledged already by {self.acknowledged['by']} "
                                      f"at {self.acknowledged['at']}.")
        self.acknowledged = {"by": by, "at": at, "note": note}
        return dict(self.acknowledged)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertState:
        """Inverse of `to_json`; a missing or mistyped field raises UserInputError naming it."""
        known = cls.__dataclass_fields__
        unknown = set(data) - set(known)
        if unknown or "name" not in data:
            raise UserInputError(f"alert state: unexpected fields {sorted(unknown)}" if unknown
                                 else "alert state: 'name' is missing")
        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        for key in ("fire_after", "clear_after", "significant_streak", "clean_streak", "sequence"):
            if key in data and not whole(data[key]):
                raise UserInputError(f"alert state {data['name']!r}: {key}={data[key]!r} must be a whole number")
        for key in ("last_window", "fired_at", "cleared_at"):
            if data.get(key) is not None and not whole(data[key]):
                raise UserInputError(
                    f"alert state {data['name']!r}: {key}={data[key]!r} must be a whole number or null")
        if not isinstance(data.get("active", False), bool) or not isinstance(data.get("pending", []), list):
            raise UserInputError(f"alert state {data['name']!r}: 'active' must be true/false and 'pending' a list")
        ack = data.get("acknowledged")
        if ack is not None and not (isinstance(ack, dict) and all(isinstance(ack.get(k), str)
                                                                  for k in ("by", "at", "note"))):
            raise UserInputError(f"alert state {data['name']!r}: 'acknowledged' must be null or "
                                 "{by, at, note} strings")
        return cls(**{k: (list(v) if k == "pending" else v) for k, v in data.items()})
