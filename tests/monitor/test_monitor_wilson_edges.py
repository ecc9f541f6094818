"""The Wilson interval holds its own proportion at 0 of n and n of n: rounding left the bound a hair inside
(2.8e-17, 0.9999999999999999), and a window whose reviewer labels were all right then crashed `sightline monitor`
(the plot's error bar accuracy - low was negative)."""
from __future__ import annotations

import numpy as np
from test_monitor_window_words import _batch, _profile, _report, draw_the_accuracy_plot_only

from sightline.monitor.estimate import wilson_interval
from sightline.monitor.report import plots
from sightline.monitor.windows import summarize


def test_the_interval_holds_its_proportion_for_every_count() -> None:
    counts = [(k, n) for n in range(1, 41) for k in range(n + 1)] + [(k, n) for n in range(41, 1001)
                                                                      for k in (0, 1, n - 1, n)]
    for k, n in counts:
        low, high = wilson_interval(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0, (k, n, low, high)
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_a_window_whose_labels_are_all_right_is_drawn(monkeypatch) -> None:
    batch = _batch(60, 5)
    batch.probabilities[:] = [0.1, 0.9]  # every image read as a bee
    batch.reviewed = np.full(60, -1)
    batch.reviewed[:10] = 1  # 10 labelled, all bees: 10 of 10 right
    batch.in_slice = np.zeros(60, bool)
    batch.in_slice[:10] = True
    window = summarize(_profile(), batch, kind="block", key=60, min_window=100)
    m = window["measured_accuracy"]
    assert m["accuracy"] == 1.0 and m["high"] == 1.0 and m["random_slice"]["high"] == 1.0
    draw_the_accuracy_plot_only(monkeypatch)
    assert "accuracy" in plots(_report([window, window]))
