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
