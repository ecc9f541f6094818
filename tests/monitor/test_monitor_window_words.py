"""What a window's summary and the report say in words: the label-free accuracy is marked not reliable when the
window drifted, and the report opens with what happened."""
from __future__ import annotations

import numpy as np
import pytest

from sightline.monitor.ood import OODChoice
from sightline.monitor.reference import ReferenceProfile
from sightline.monitor.report import plots, render_html
from sightline.monitor.windows import Batch, summarize

CLASSES = ["ants", "bees"]
C = 6


def _profile(m=200, seed=0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([4.0, 4.0], m)
    choice = OODChoice(score="msp", threshold=0.5, quantile=0.99, chosen_by="test", n_in=m, n_out=0,
                       table={"msp": {"val_flag_rate": 0.01}})
    stats = {"brightness": rng.normal(0.45, 0.08, m), "format": np.array(["JPEG"] * m)}
    return ReferenceProfile(classes=CLASSES, temperature=1.0, logits=np.log(probs).astype(np.float32),
                            pca_mean=np.zeros(C, np.float32), pca_components=np.eye(C, dtype=np.float32),
                            projected=rng.normal(size=(m, C)).astype(np.float16), image_stats=stats,
                            ood_choice=choice)


def _batch(n, seed, *, shift=0.0, unknown=0.0, brightness=0.45) -> Batch:
    rng = np.random.default_rng(seed)
    return Batch(ids=np.arange(1, n + 1), times=np.arange(n, dtype=np.float64),
                 probabilities=rng.dirichlet([4.0, 4.0], n).astype(np.float32),
                 projected=(rng.normal(size=(n, C)) + shift).astype(np.float32), unknown=rng.random(n) < unknown,
                 ood=np.full(n, np.nan),
                 image_stats=[{"brightness": float(b), "format": "JPEG"} for b in rng.normal(brightness, 0.08, n)])


def test_label_free_accuracy_is_marked_not_reliable_when_the_window_drifted():
    profile = _profile()
    clean = summarize(profile, _batch(60, 1), kind="block", key=60, permutations=50)
    assert not clean["significant"]
    assert clean["expected_accuracy"]["reliable"] is True and clean["expected_accuracy"]["caveat"] is None
    # images of no trained class: features far away and most flagged unknown, yet the model stays as confident
    shifted = summarize(profile, _batch(60, 2, shift=3.0, unknown=0.8), kind="block", key=120)
    est = shifted["expected_accuracy"]
    assert shifted["significant"] and est["reliable"] is False
    assert "feature_mmd" in est["caveat"] and "unknown_rate" in est["caveat"]
    assert "label a random sample" in est["caveat"]
    small = summarize(profile, _batch(20, 3, shift=3.0), kind="block", key=140)
    assert small["expected_accuracy"]["reliable"] is None  # not tested: not known either way
    report = {"bundle": {"name": "m", "version": "1", "path": "b", "classes": CLASSES},
              "profile": {"fingerprint": "0" * 16, "n_images": 200}, "database": "sqlite://", "since": None,
              "created": "now", "n_monitored": 140, "n_predictions": 140, "messages": [], "alerts": {},
              "window": {"kind": "block", "size": 60, "min_window": 50, "alpha": 0.05, "consecutive": 2},
              "windows": [clean, shifted, small]}
    page = render_html(report, images={"accuracy": ""})
    assert page.count("(not reliable: drifted)") == 1
    assert "The label-free accuracy of 1 of 3 windows is\nnot reliable" in page


def draw_the_accuracy_plot_only(monkeypatch) -> None:
    """`plots` builds every figure, then draws only the accuracy one (what the tests calling this are about), as
    savefig draws it, a draw-time error failing the test as before, and encodes none: the five others, and the PNG
    of each, were ~0.6 s of such a test. The six drawn and encoded: test_monitor_cli's report tests."""
    import matplotlib.pyplot as plt

    from sightline.monitor import report as report_module

    def drawn(fig) -> str:
        try:
            if any("accuracy" in ax.get_title() for ax in fig.axes):
                fig.canvas.draw()
        finally:
            plt.close(fig)
        return ""

    monkeypatch.setattr(report_module, "_png", drawn)


def _report(windows, alerts=None):
    return {"bundle": {"name": "m", "version": "1", "path": "b", "classes": CLASSES},
            "profile": {"fingerprint": "0" * 16, "n_images": 200}, "database": "sqlite://", "since": None,
            "created": "now", "n_monitored": 0, "n_predictions": 0, "messages": [], "alerts": alerts or {},
            "window": {"kind": "block", "size": 60, "min_window": 50, "alpha": 0.05, "consecutive": 2},
            "windows": windows}


def test_the_report_opens_with_what_happened_in_words():
    from sightline.monitor.report import verdict

    profile = _profile()
    clean = summarize(profile, _batch(60, 1), kind="block", key=60, permutations=50)
    bees = _batch(60, 4, shift=3.0, unknown=0.8, brightness=0.15)
    bees.probabilities[:] = [0.1, 0.9]  # every image read as a bee
    drifted = summarize(profile, bees, kind="block", key=120)
    small = summarize(profile, _batch(20, 3), kind="block", key=140)

    assert verdict(_report([])) == []
    assert verdict(_report([small]))[0].startswith("No conclusion yet: the only window has fewer than the 50")
    assert verdict(_report([clean, small])) == [
        "No drift: none of the 1 tested windows differs from the reference (the validation images) at alpha = 0.05 "
        "(1 smaller window not tested). No alert."]
    drifted["alert_active"] = True
    raised = {"drift": {"active": True, "about_this_bundle": True}}
    lines = verdict(_report([drifted, clean], raised))
    assert lines[0] == ("ALERT raised by the service (drift): 1 of 2 tested windows differ from the reference (the "
                        "validation images).")
    assert lines[1].startswith("In window 1-60 (60 predictions, 1970-01-01T00:00:00+00:00 to")
    text = "\n".join(lines)
    assert "were rejected as 'unknown'" in text and "validation: 1.0%" in text
    assert "bees 100% (reference" in text  # the class mix
    assert "brightness (0 black - 1 white) 0.145 (reference 0.439; medians)" in text
    assert "not reliable under this shift" in text
    assert lines[-1] == "The newest tested window, 1-60, is consistent with the reference."
    page = render_html(_report([drifted, clean]) | {"verdict": lines}, images={})
    assert 'class="verdict alarm"' in page and "ALERT raised by the service (drift)" in page
    # another model's raised alert is not this bundle's: the verdict speaks of the windows only
    other = {"drift": {"active": True, "about_this_bundle": False}}
    assert verdict(_report([clean, drifted], other))[0].startswith("Drift: 1 of 2 tested windows differ")
    # raised, then cleared by clean windows: said so, not that the rule is met
    passed = [drifted, dict(drifted, alert_event="fired"), dict(clean, alert_active=True),
              dict(clean, alert_active=False, alert_event="cleared")]
    assert verdict(_report(passed, {"drift": {"active": False, "about_this_bundle": True}}))[0] == (
        "Drift that has passed: 2 of 4 tested windows differ from the reference; 2 in a row met the alert's rule at "
        "window 1-60, and 2 clean windows cleared it. No alert now.")


def test_a_reviewers_unknown_label_counts_in_measured_accuracy():
    """Reviewers label images of no trained class 'unknown'; those labels were read as no label at all, so a
    window of clip art the model called bees had no measured accuracy. Now one is right where the service said
    unknown too."""
    from datetime import datetime, timezone

    from sightline.serve.monitoring import batch_from_rows

    profile = _profile()
    n = 60
    probs = np.tile(np.float32([0.2, 0.8]), (n, 1))
    labels = ["unknown"] * 10 + ["bees"] * 4 + ["ants"] * 2 + [None] * (n - 16)
    flagged = [True] * 6 + [False] * (n - 6)  # 6 of the 10 'unknown' images rejected, 4 called bees
    rows = [{"prediction_id": i + 1, "created": datetime(2026, 1, 1, tzinfo=timezone.utc),
             "probabilities": probs[i].tobytes(), "projected": np.zeros(C, np.float16).tobytes(),
             "unknown": flagged[i], "ood_score": 1.0, "image_stats": {}, "reviewed_label": labels[i]}
            for i in range(n)]
    batch = batch_from_rows(rows, profile)
    assert batch.reviewed[:10].tolist() == [-2] * 10 and batch.reviewed[16:].max() == -1
    m = summarize(profile, batch, kind="block", key=n, min_window=100)["measured_accuracy"]
    assert m["n"] == 16 and m["accuracy"] == (6 + 4) / 16  # 6 rejected unknowns and 4 bees right, 2 ants wrong
    assert m["not_a_class"] == {"n": 10, "rejected": 6}


def test_the_random_slice_measures_the_windows_accuracy_apart_from_the_queue(tmp_path, monkeypatch):
    """The review queue holds the hard images, so accuracy on its labels is biased low; the service's random slice
    is drawn whatever the decision, and the report now measures accuracy on its labelled members apart."""
    from sightline.serve.monitoring import _slice_members
    from sightline.storage.store import Store

    profile = _profile()
    n = 60
    batch = _batch(n, 5)
    batch.probabilities[:] = [0.1, 0.9]  # every image read as a bee
    batch.reviewed = np.full(n, -1)
    batch.reviewed[:10] = 0  # the queue: 10 hard images, all ants (wrong)
    batch.reviewed[10:18] = [1] * 7 + [0]  # the slice: 8 labelled members, 7 right
    batch.in_slice = np.zeros(n, bool)
    batch.in_slice[10:22] = True  # 12 members, 4 not labelled yet
    m = summarize(profile, batch, kind="block", key=n, min_window=100)["measured_accuracy"]
    assert m["n"] == 18 and m["accuracy"] == 7 / 18
    rs = m["random_slice"]
    assert rs["members"] == 12 and rs["n"] == 8 and rs["accuracy"] == 7 / 8 and rs["low"] < 7 / 8 < rs["high"]
    assert batch.take(slice(10, 14)).in_slice.all()
    window = summarize(profile, batch, kind="block", key=n, min_window=100)
    draw_the_accuracy_plot_only(monkeypatch)
    assert "accuracy" in plots(_report([window, window]))  # both measurements drawn

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        store.add_kept_images([{"prediction_id": i, "sha256": "0" * 64, "reason": reason, "content_type": "image/png",
                                "size": 1, "in_slice": flag}
                               for i, reason, flag in ((1, "review", False), (2, "review", True), (3, "sample", False),
                                                       (4, "sample", True), (5, "unknown", False))])
        assert sorted(_slice_members(store).tolist()) == [2, 3, 4]  # an old 'sample' row is a member too
    finally:
        store.close()


def test_a_statistic_that_moved_for_some_images_only_is_not_read_as_unchanged():
    """A window a fifth clip art: the KS test on width is significant while the median width is the photos' 250
    px, and the report read 'image width (px) 250 (reference 250; medians)', a change that shows none."""
    from sightline.monitor.report import _stat_words

    mixed = {"window_median": 250.0, "reference_median": 250.0, "shift_iqr": 0.0}
    assert _stat_words("width", mixed) == ("image width (px) of some images (the median is about the same: 250, "
                                           "reference 250)")
    moved = {"window_median": 0.16, "reference_median": 0.47, "shift_iqr": -3.1}
    assert _stat_words("brightness", moved) == "brightness (0 black - 1 white) 0.160 (reference 0.470; medians)"
    fmt = {"window_top": "JPEG", "window_share": 0.8, "reference_share": 1.0}
    assert _stat_words("format", fmt) == "file format JPEG for 80% of the window (100% of the reference)"


def test_the_p_value_legend_leaves_the_floor_visible(monkeypatch):
    """A strong drift's p-values sit at the plot's floor (1e-6), where the legend was drawn, over them."""
    import matplotlib

    matplotlib.use("Agg")
    from sightline.monitor import report as report_module

    profile = _profile()
    drifted = summarize(profile, _batch(60, 2, shift=3.0, unknown=0.8), kind="block", key=60)
    figures = []

    class First(Exception):  # the p-value plot is drawn first: stop there
        pass

    def keep(fig):
        figures.append(fig)
        raise First

    monkeypatch.setattr(report_module, "_png", keep)
    with pytest.raises(First):
        report_module.plots(_report([drifted, drifted]))
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1 - 1  # beside the axes, not over the floor
    assert any("drawn here" in t.get_text() for t in ax.get_legend().get_texts())
