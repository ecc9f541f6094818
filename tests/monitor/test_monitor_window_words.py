"""What a window's summary and the report say in words: the label-free accuracy is marked not reliable when the
window drifted, and the report opens with what happened."""
from __future__ import annotations

import numpy as np

from sightline.monitor.ood import OODChoice
from sightline.monitor.reference import ReferenceProfile
from sightline.monitor.report import render_html
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
    assert "feature_mmd" in est["caveat"] and "unknown_rate" in est["caveat"] and "label a random sample" in est["caveat"]
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
