"""Alert hysteresis, restart safety (JSON round trip, no repeated and no lost events)."""
from __future__ import annotations

import json

import pytest

from sightline.errors import UserInputError
from sightline.monitor.alerts import AlertState


def _run(state: AlertState, verdicts, start: int = 1) -> list[tuple[int, str]]:
    events = []
    for i, v in enumerate(verdicts, start=start):
        ev = state.update(window_id=i, significant=v)
        if ev:
            events.append((i, ev["kind"]))
    return events


def test_fires_after_k_significant_and_clears_after_k_clean():
    state = AlertState(name="drift")
    seq = [True, False, True, True, True, False, True, False, False, False, True]
    assert _run(state, seq) == [(4, "fired"), (9, "cleared")]
    assert not state.active and state.fired_at == 4 and state.cleared_at == 9 and state.significant_streak == 1


def test_k_of_one_and_three():
    assert _run(AlertState(name="a", fire_after=1, clear_after=1), [True, False, True]) == \
        [(1, "fired"), (2, "cleared"), (3, "fired")]
    three = AlertState(name="b", fire_after=3, clear_after=3)
    assert _run(three, [True, True, False, True, True, True]) == [(6, "fired")]
    with pytest.raises(UserInputError, match="at least 1"):
        AlertState(name="c", fire_after=0)


def test_untested_windows_break_no_streak():
    state = AlertState(name="drift")
    assert _run(state, [True, None, True]) == [(3, "fired")]


def test_restart_neither_repeats_nor_loses():
    state = AlertState(name="drift")
    _run(state, [True, True])  # fired at window 2, not yet delivered
    saved = json.dumps(state.to_json())
    # crash before delivery; restart from the saved state
    restored = AlertState.from_json(json.loads(saved))
    assert restored == state and [e["kind"] for e in restored.pending] == ["fired"]
    # the server re-evaluates the last windows after the restart: nothing counts twice, nothing fires again
    assert _run(restored, [True, True]) == [] and restored.significant_streak == 2
    event_id = restored.pending[0]["id"]
    assert restored.acknowledge(event_id) and not restored.acknowledge(event_id)
    assert restored.pending == [] and restored.active
    assert _run(restored, [True, False, False], start=3) == [(5, "cleared")]
    assert restored.pending[0]["id"] != event_id  # a new event, a new webhook-id


def test_from_json_names_bad_fields():
    good = AlertState(name="drift").to_json()
    with pytest.raises(UserInputError, match="last_window"):
        AlertState.from_json({**good, "last_window": "7"})
    with pytest.raises(UserInputError, match="unexpected fields"):
        AlertState.from_json({**good, "colour": 1})
    with pytest.raises(UserInputError, match="'name' is missing"):
        AlertState.from_json({k: v for k, v in good.items() if k != "name"})


def test_a_person_acknowledges_a_raised_alert_until_it_clears():
    from sightline.monitor.alerts import AlertNotRaisedError

    state = AlertState(name="drift")
    with pytest.raises(AlertNotRaisedError, match="not raised"):
        state.acknowledge_raised(by="ann", at="2026-01-01T00:00:00+00:00")
    _run(state, [True, True])
    with pytest.raises(UserInputError, match="501 characters"):
        state.acknowledge_raised(by="ann", at="t", note="x" * 501)
    assert state.acknowledged is None
    ack = state.acknowledge_raised(by="ann", at="2026-01-01T00:00:00+00:00", note=" looking ")
    assert ack == {"by": "ann", "at": "2026-01-01T00:00:00+00:00", "note": "looking"}
    with pytest.raises(AlertNotRaisedError, match="acknowledged already by ann at 2026-01-01T00:00:00"):
        state.acknowledge_raised(by="bob", at="t")
    restored = AlertState.from_json(json.loads(json.dumps(state.to_json())))  # persisted: a restart keeps it
    assert restored.acknowledged == ack and [e["kind"] for e in restored.pending] == ["fired"]
    assert restored.acknowledge(restored.pending[0]["id"]) and restored.acknowledged == ack  # the outbox's, apart
    assert _run(restored, [True, False], start=3) == [] and restored.acknowledged == ack  # still raised
    assert _run(restored, [False], start=5) == [(5, "cleared")] and restored.acknowledged is None
    assert _run(restored, [True, True], start=6) == [(7, "fired")] and restored.acknowledged is None
    with pytest.raises(UserInputError, match="'acknowledged' must be null"):
        AlertState.from_json({**restored.to_json(), "acknowledged": {"by": "ann"}})
    old = {k: v for k, v in restored.to_json().items() if k != "acknowledged"}  # written before acknowledgements
    assert AlertState.from_json(old).acknowledged is None
