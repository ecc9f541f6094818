"""The verdict counts complete windows only (as the service does), names every window that drifted (not only the
last), and gives a window still filling a line of its own; the CLI and the page show its findings as a list."""
from __future__ import annotations

from sightline.monitor.report import render_html, verdict, verdict_blocks


def _window(key: int, *, n: int = 60, significant: bool | None = False, partial: bool = False,
            alert_active: bool = False, alert_event: str | None = None) -> dict:
    tests = {"unknown_rate": {"p_value": 1e-9 if significant else 0.5, "significant": bool(significant)}}
    return {"kind": "block", "key": key, "first_id": key - n + 1, "last_id": key, "n": n, "start": "s", "end": "e",
            "tested": significant is not None, "significant": significant, "p_value": 1e-9 if significant else 0.4,
            "partial": partial, "alert_active": alert_active, "alert_event": alert_event, "tests": tests,
            "unknown_rate": 0.9 if significant else 0.01, "reference_unknown_rate": 0.01}


def _report(windows: list[dict]) -> dict:
    return {"bundle": {"name": "m", "version": "1", "path": "b", "classes": ["a", "b"]},
            "profile": {"fingerprint": "0" * 16, "n_images": 200}, "database": "sqlite://", "since": None,
            "created": "now", "n_monitored": 0, "n_predictions": 0, "messages": [], "alerts": {},
            "window": {"kind": "block", "size": 60, "min_window": 20, "alpha": 0.05, "consecutive": 2},
            "windows": windows}


def test_every_drifted_window_is_named_and_the_filling_one_is_apart() -> None:
    windows = [_window(60, significant=True), _window(120), _window(180, significant=True),
               _window(240, significant=True, alert_active=True, alert_event="fired"),
               _window(270, n=30, significant=True, partial=True, alert_active=True)]
    lines = verdict(_report(windows))
    assert lines[0] == "Drift: 3 of 4 tested windows differ from the reference, 2 in a row: the alert's rule is met."
    assert lines[1] == "The windows that differ: 1-60 (p = 1e-09), 121-180 (p = 1e-09), 181-240 (p = 1e-09)."
    assert lines[2].startswith("In the latest, window 181-240 (60 predictions")
    assert lines[3].startswith("- 90% of its images were rejected as 'unknown'")
    assert lines[4].startswith("The newest window, 241-270, is still filling (30 of 60 predictions): it already "
                               "differs from the reference (p = 1e-09), not yet counted")
    blocks = verdict_blocks(lines)
    assert [len(items) for _, items in blocks] == [0, 0, 1, 1]
    page = render_html(_report([]) | {"verdict": lines}, images={})  # the verdict part of the page
    assert page.count("<li>90% of its images were rejected") == 2 and "<li>- " not in page


def test_a_lone_window_still_filling_is_no_conclusion() -> None:
    lines = verdict(_report([_window(30, n=30, significant=True, partial=True)]))
    assert lines[0].startswith("No conclusion yet: no window is complete")
    assert lines[1].startswith("The newest window, 1-30, is still filling (30 of 60 predictions): it already differs")
    small = verdict(_report([_window(60), _window(70, n=10, significant=None, partial=True)]))
    assert small[0].startswith("No drift: none of the 1 tested windows differs")
    assert small[1] == ("The newest window, 61-70, is still filling (10 of 60 predictions): too few predictions to "
                        "test yet; it is tested and counted toward an alert once complete.")


def test_an_alert_raised_by_the_service_heads_the_verdict_without_complete_windows() -> None:
    # `monitor --window hour` in the first hour while the service's block alert is raised: the verdict read "No
    # conclusion yet" above the open hour's drift
    report = _report([_window(30, n=30, significant=True, partial=True)])
    report["alerts"] = {"drift": {"active": True, "about_this_bundle": True}}
    lines = verdict(report)
    assert lines[0].startswith("ALERT raised by the service (drift); no window here is complete yet")
    assert lines[1].startswith("The newest window, 1-30, is still filling")
