"""The `monitor:` section of sightline.yaml: parsed with one-line errors naming the field, and read by the service
(SIGHTLINE_SPEC) beneath its SIGHTLINE_* variables."""
from __future__ import annotations

import pytest

from sightline.errors import SpecError, UserInputError
from sightline.serve.settings import Settings, load_settings
from sightline.spec import MonitorSpec, load_spec, parse_spec, write_spec_template

MONITOR = """\
monitor:
  window: 200
  alpha: 0.01
  consecutive: 3
  webhook_url: https://hooks.example.com/sightline
"""
SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"  # base64 of a 27-byte test secret


def test_monitor_section_sets_only_what_it_writes(tmp_path):
    spec = parse_spec({"monitor": {"window": 200, "alpha": 0.01, "consecutive": 3,
                                   "webhook_url": "https://hooks.example.com/sightline"}})
    assert spec.monitor.settings() == {"monitor_window": 200, "monitor_alpha": 0.01, "monitor_consecutive": 3,
                                       "alert_webhook_url": "https://hooks.example.com/sightline"}
    assert spec.monitor.min_window == 50  # the default, but not written: the service keeps its own
    assert parse_spec({}).monitor.settings() == {}
    assert parse_spec({"monitor": None}).monitor == MonitorSpec()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("monitor:\n  window: 1\n", "monitor.window=1 must be >= 2."),
        ("monitor:\n  window: lots\n", "monitor.window='lots' must be a whole number."),
        ("monitor:\n  consecutive: 0\n", "monitor.consecutive=0 must be >= 1."),
        ("monitor:\n  consecutive: true\n", "monitor.consecutive=True must be a number, not true or false."),
        ("monitor:\n  alpha: 0\n", "monitor.alpha=0 must be > 0."),
        ("monitor:\n  alpha: 0.9\n", "monitor.alpha=0.9 must be <= 0.5."),
        ("monitor:\n  webhook_url: ftp://x\n", "monitor.webhook_url='ftp://x' must be an http:// or https:// URL."),
        ("monitor:\n  window: 40\n", "monitor: min_window (50) is above window (40): no window would ever be tested."),
        ("monitor:\n  windows: 500\n", "monitor.windows is an unknown key; did you mean 'window'?"),
        ("monitor:\n  webhook_secret: whsec_abc\n", "monitor: the webhook's signing secret does not belong in this file"),
        ("monitor: 500\n", "monitor=500 must be a mapping of key: value."),
    ],
)
def test_bad_monitor_section_names_the_field(tmp_path, text, message):
    path = tmp_path / "sightline.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    got = str(info.value)
    assert got.startswith(str(path)) and message in got, got
    assert "\n" not in got


def test_template_documents_the_section(tmp_path):
    path = write_spec_template(tmp_path, ["ants", "bees"])
    text = path.read_text()
    assert "# monitor: {window: 500" in text
    # the commented line, uncommented, is a valid section
    line = next(x for x in text.splitlines() if x.startswith("# monitor:"))
    path.write_text(line.removeprefix("# ") + "\n")
    assert load_spec(path).monitor.settings()["monitor_window"] == 500


def test_service_reads_the_section_beneath_its_variables(tmp_path, monkeypatch):
    for name in ("SIGHTLINE_MONITOR_WINDOW", "SIGHTLINE_MONITOR_ALPHA", "SIGHTLINE_MONITOR_CONSECUTIVE",
                 "SIGHTLINE_ALERT_WEBHOOK_URL", "SIGHTLINE_ALERT_WEBHOOK_SECRET", "SIGHTLINE_SPEC",
                 "SIGHTLINE_MONITOR_MIN_WINDOW"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "sightline.yaml"
    path.write_text(MONITOR)
    monkeypatch.setenv("SIGHTLINE_ALERT_WEBHOOK_SECRET", SECRET)
    s = Settings(bundle=tmp_path, spec=path)
    assert (s.monitor_window, s.monitor_alpha, s.monitor_consecutive, s.monitor_min_window) == (200, 0.01, 3, 50)
    assert s.alert_webhook_url == "https://hooks.example.com/sightline"
    # a variable wins over the file; the file is named by SIGHTLINE_SPEC as well as by the argument
    monkeypatch.setenv("SIGHTLINE_MONITOR_WINDOW", "300")
    monkeypatch.setenv("SIGHTLINE_SPEC", str(path))
    s = load_settings(bundle=tmp_path)
    assert (s.monitor_window, s.monitor_consecutive) == (300, 3)
    # without a spec nothing changes
    monkeypatch.delenv("SIGHTLINE_SPEC")
    monkeypatch.delenv("SIGHTLINE_MONITOR_WINDOW")
    s = load_settings(bundle=tmp_path)
    assert (s.monitor_window, s.monitor_consecutive, s.alert_webhook_url) == (500, 2, None)


def test_service_spec_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SIGHTLINE_ALERT_WEBHOOK_SECRET", raising=False)
    bad = tmp_path / "sightline.yaml"
    bad.write_text("monitor:\n  alpha: 2\n")
    with pytest.raises(SpecError, match=r"monitor\.alpha=2 must be <= 0\.5\.$"):
        load_settings(bundle=tmp_path, spec=bad)
    with pytest.raises(SpecError, match="cannot be read"):
        load_settings(bundle=tmp_path, spec=tmp_path / "missing.yaml")
    # a webhook from the file still needs its secret from the environment
    bad.write_text(MONITOR)
    with pytest.raises(UserInputError, match="SIGHTLINE_ALERT_WEBHOOK_SECRET"):
        load_settings(bundle=tmp_path, spec=bad)
