"""The typed result and what is built from it: metrics.json (a Mapping of exactly its keys), report.html (Jinja2,
section by section, escaped, self-contained) and MODEL_CARD.md (Markdown, not escaped). Results are made here
from the stage's own pure functions on small arrays; no model runs."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from sightline.bundle import Bundle, Preprocessing
from sightline.decision import decide, softmax
from sightline.evaluate.calibration import expected_calibration_error, reliability
from sightline.evaluate.metrics import bootstrap_ci, classification_metrics, coverage_accuracy_curve
from sightline.evaluate.report import SECTIONS, render_report, render_section, write_model_card, write_report
from sightline.evaluate.result import EvaluationResult, write_json

HOSTILE = "<script>alert(1)</script>"


def _result(classes: list[str], **changes) -> EvaluationResult:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(classes)), 6)
    logits = rng.normal(size=(len(y), len(classes))) + 1.5 * np.eye(len(classes))[y]
    dec = decide(logits, classes)
    correct = dec.labels == y
    figures = classification_metrics(y, dec.labels, dec.probabilities, classes)
    result = EvaluationResult(
        split="test", **figures, argmax_accuracy=float(correct.mean()), decision_rule="arg-max",
        ci=bootstrap_ci(y, dec.labels, len(classes), n_resamples=20), ece_uncalibrated=0.2,
        ece=expected_calibration_error(dec.probabilities, y), temperature=1.0,
        reliability={"before": reliability(softmax(logits), y), "after": reliability(dec.probabilities, y)},
        review={"review_confidence": 0.6, "chosen_on": "val", "coverage": 0.75, "accuracy_accepted": 0.9,
                "n_review": 4, "curve": coverage_accuracy_curve(correct, dec.confidences), "val_curve": None},
        thresholds={}, expected_cost=None,
        targets=[{"target": f"recall of {classes[-1]} >= 0.9", "metric": "recall", "class": classes[-1], "min": 0.9,
                  "max": None, "value": 0.5, "val_value": 0.95, "passed": False}],
        spec={"path": None, "task": f"Find {HOSTILE}.", "primary_metric": "macro_f1"},
        unreadable=[], struggling_classes=[], explain_method="gradcam",
        model={"name": "parts", "version": "3", "architecture": "test_efficientnet", "path": "/r/bundle",
               "dataset_version": "abc"},
        data={"root": "/data", "n_val": 12, "device": "cpu"}, timings={"predict_s": 0.5},
    )
    return replace(result, **changes)


def _gallery(classes: list[str]) -> list[dict]:
    return [{"class": c, "group": "wrong", "path": f"test/{c}/{HOSTILE}.png", "true": c, "predicted": classes[0],
             "confidence": 0.4, "image": "iVBORw0KGgo=", "heatmap": "iVBORw0KGgo="} for c in classes]


@pytest.fixture
def unrendered_plots(monkeypatch):
    """plots() builds its figures but leaves their pixels undrawn (drawing is ~80 ms a figure, 4-6 a page): each
    becomes a digest of the text it holds (titles, legends with the AP/ECE/temperature figures, cell labels), for
    tests that read the page's text; test_report_escapes_every_name_a_user_chose_and_stays_self_contained renders
    real ones."""
    import hashlib

    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from sightline.evaluate import report

    def digest(fig, **kw):
        text = "\x00".join(t.get_text() for t in fig.findobj(Text))
        plt.close(fig)
        return hashlib.sha256(text.encode()).hexdigest()

    monkeypatch.setattr(report, "figure_png", digest)


def test_result_reads_like_metrics_json_and_round_trips(tmp_path, unrendered_plots):
    r = _result(["a", "b"])
    keys = list(r)
    assert keys[:3] == ["split", "n_images", "accuracy"] and keys[-2:] == ["timings", "files"]
    for absent in ("warning", "pointing_game", "robustness", "seeds"):  # None: not in the file, not in the mapping
        assert absent not in keys and absent not in r
        with pytest.raises(KeyError):
            r[absent]
    assert r["accuracy"] == r.accuracy and r.get("nope") is None and len(r) == len(keys)
    on_disk = json.loads(write_json(r, tmp_path / "metrics.json").read_text())
    assert list(on_disk) == keys
    back = EvaluationResult.from_json(on_disk)
    assert back == r and render_report(back, gallery=[]) == render_report(r, gallery=[])
    with_regions = replace(r, pointing_game={"overall": 0.5}, warning="w")
    assert "pointing_game" in with_regions and list(with_regions).index("warning") == keys.index("spec") + 1


def test_report_escapes_every_name_a_user_chose_and_stays_self_contained(tmp_path):
    classes = ["ok", HOSTILE]
    r = _result(classes)
    html = write_report(r, tmp_path / "report.html", gallery=_gallery(classes)).read_text()
    assert "<script" not in html and html.count("&lt;script&gt;") >= 5  # task, per-class row, target, gallery
    assert not re.search(r"https?://", html)
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<style>" in html and "<link" not in html  # CSS inline, nothing fetched


def test_sections_show_only_what_the_result_has(unrendered_plots):
    r = _result(["a", "b"])
    for name in ("seeds", "robustness", "regions", "gallery"):
        assert render_section(name, r) == "", name
    assert render_section("precision_recall", r, figs={}) == ""  # no curve to show (e.g. one class only)
    seeds = {"n_seeds": 2, "per_seed": [{"seed": "0", "accuracy": 0.5}, {"seed": "1", "accuracy": None}],
             "mean": {"accuracy": 0.5}, "std": {"accuracy": 0.0}}
    table = render_section("seeds", replace(r, seeds=seeds))
    assert "Variance across 2 seeds" in table and "0.5000 ± 0.0000" in table and "<td></td>" in table
    gallery = render_section("gallery", r, gallery=_gallery(["b"]))
    assert "<h3>b</h3>" in gallery and "<h3>a</h3>" not in gallery  # per class, only classes with images
    html = render_report(r, gallery=[])
    starts = [html.index(marker) for marker in ("<h1>", "<h2>Summary", "<h2>Per class", "<h2>Calibration",
                                                "Generated by")]
    assert starts == sorted(starts) and (SECTIONS[0], SECTIONS[-1]) == ("header", "footer")


def test_summary_warns_about_what_needs_a_person():
    r = _result(["a", "b"], struggling_classes=[
        {"class": "b", "recall": 0.5, "precision": 0.6, "f1": 0.55, "confused_with": "a", "n_confused": 3}],
        thresholds={"details": {"b": {"reachable": False}}, "review": {"reachable": False, "target_accuracy": 0.99}},
        unreadable=[{"path": "x.png", "reason": "truncated"}],
        review={**_result(["a", "b"]).review, "chosen_on": "bundle"})
    text = " ".join(re.sub(r"<[^>]+>", " ", render_section("summary", r)).split())
    assert "Targets: 0 of 1 met on test" in text and "FAIL" in text
    assert "b : recall 50.0 %, precision 60.0 %; most often mistaken for a (3 images)" in text
    assert "No threshold meets the targets for b" in text and "do not reach 99.0 % accuracy" in text
    assert "1 image(s) could not be read" in text
    assert "thresholds and temperature kept from the bundle" in render_section("header", r)


def test_model_card_is_markdown_not_html(tmp_path):
    r = _result(["a", "b"], robustness={"n_images": 6, "failure_modes": ["Accuracy falls under blur."]})
    bundle = Bundle("test_efficientnet", ["a", "b"], preprocessing=Preprocessing(input_size=32))
    bundle.path = tmp_path
    card = write_model_card(r, bundle).read_text()
    assert card.startswith("# Model card: ") and card.endswith("watch the review queue.\n")
    assert "- FAIL: recall of b >= 0.9 (got 0.500)" in card and "&gt;" not in card
    assert f"**Task**: Find {HOSTILE}." in card  # Markdown keeps the text as written
    assert "## Failure modes (corruption suite on 6 test images)\n\n- Accuracy falls under blur.\n" in card
    assert "\n\n\n" not in card  # no stray blank lines from the template's blocks


def test_a_target_passed_on_few_images_says_so_in_report_and_card(tmp_path):
    passed = {"target": "recall of b >= 0.9", "metric": "recall", "class": "b", "min": 0.9, "max": None,
              "value": 25 / 26, "val_value": 0.885, "passed": True, "n": 26, "low": 0.8116, "high": 0.9932,
              "conclusive": False}
    failed = {**passed, "target": "accuracy >= 0.99", "metric": "accuracy", "class": None, "min": 0.99, "value": 0.9,
              "passed": False, "n": 100, "low": 0.826, "high": 0.945, "conclusive": True}
    r = _result(["a", "b"], targets=[passed, failed])
    text = " ".join(re.sub(r"<[^>]+>", " ", render_section("summary", r)).split())
    assert "0.962 0.812 – 0.993 (26) 0.885 PASS not conclusive" in text
    assert "Not conclusive: the 95 % Wilson interval of the test figure reaches the other side" in text
    bundle = Bundle("test_efficientnet", ["a", "b"], preprocessing=Preprocessing(input_size=32))
    bundle.path = tmp_path
    card = write_model_card(r, bundle).read_text()
    assert ("- PASS: recall of b >= 0.9 (got 0.962, 95 % CI 0.812 – 0.993 on 26 images); not conclusive: the"
            " interval reaches the other side of the target\n"
            "- FAIL: accuracy >= 0.99 (got 0.900, 95 % CI 0.826 – 0.945 on 100 images)\n\n## Decisions") in card
    # A row from before the interval was recorded (no n) renders as it did.
    old = {k: v for k, v in passed.items() if k not in ("n", "low", "high", "conclusive")}
    assert "not conclusive" not in render_section("summary", _result(["a", "b"], targets=[old]))


def test_a_class_weak_on_precision_names_the_class_taken_for_it(tmp_path):
    # The digits run: 8 threes called five make five's precision 73.5 %, while five's own misses are 2 sixes.
    # Naming only "six" would point the reader away from the problem.
    from sightline.evaluate.figures import struggling_classes

    classes = ["five", "six", "three"]
    cm = np.array([[25, 2, 0], [1, 23, 0], [8, 0, 28]])
    y = np.repeat(np.arange(3), cm.sum(axis=1))
    pred = np.concatenate([np.repeat(np.arange(3), row) for row in cm])
    figures = classification_metrics(y, pred, np.eye(3)[pred], classes)
    r = _result(classes)
    r = replace(r, **{k: figures[k] for k in ("per_class", "confusion_matrix", "macro_recall")})
    five = next(s for s in struggling_classes(r, classes) if s["class"] == "five")
    assert (five["confused_with"], five["n_confused"]) == ("six", 2)
    assert (five["taken_from"], five["n_taken_from"]) == ("three", 8)
    text = " ".join(re.sub(r"<[^>]+>", " ", render_section("summary", replace(r, struggling_classes=[five]))).split())
    assert "five : recall 92.6 %, precision 73.5 %; most often mistaken for six (2 images); three most often" \
           " mistaken for it (8 images)" in text
    bundle = Bundle("test_efficientnet", classes, preprocessing=Preprocessing(input_size=32))
    bundle.path = tmp_path
    card = write_model_card(replace(r, struggling_classes=[five]), bundle).read_text()
    assert "- five: recall 93%, precision 74%, most often confused with six, three most often taken for it\n" in card


def test_reliability_markers_are_sized_by_the_images_in_their_bin(monkeypatch):
    # A bin of 1 image at accuracy 0 drawn like the bin holding most of the split read as bad calibration.
    import matplotlib.pyplot as plt

    import sightline.evaluate.report as report

    drawn = {}
    monkeypatch.setattr(report, "figure_png", lambda fig, **kw: drawn.setdefault(len(drawn), fig) and "png")
    rel = {"confidence": [None, 0.45, 0.99], "accuracy": [None, 0.0, 0.99], "count": [0, 1, 217],
           "bin_center": [0.1, 0.5, 0.9]}
    r = _result(["a", "b"], reliability={"before": rel, "after": rel})
    report.plots(r)
    fig = next(f for f in drawn.values() if f.axes[0].get_title().startswith("Reliability diagram"))
    sizes = [list(c.get_sizes()) for c in fig.axes[0].collections]
    plt.close("all")
    assert sizes and all(s[1] > 50 * s[0] for s in sizes)


def test_calibration_section_says_whether_the_review_goal_holds_on_test():
    # The digits run: r = 0.45 was chosen for 95 % accuracy on val (95.0 %); on test the kept predictions are 93.5 %.
    rule = "lowest confidence whose accepted val predictions reach 95.0 % accuracy"
    review = {"target_accuracy": 0.95, "rule": rule, "reachable": True, "val_coverage": 0.9739,
              "val_accuracy_accepted": 0.9502}
    r = _result(["a", "b"], thresholds={"review_confidence": 0.45, "review": review},
                review={**_result(["a", "b"]).review, "review_confidence": 0.45, "coverage": 0.9849,
                        "accuracy_accepted": 0.9349, "n_review": 4})
    text = " ".join(re.sub(r"<[^>]+>", " ", render_section("calibration", r, figs={"reliability": "x"})).split())
    assert ("Predictions less confident than 0.45 go to a person (lowest confidence whose accepted val predictions"
            " reach 95.0 % accuracy: 95.0 % accurate on the 97.4 % of val kept). On test: 93.5 % accurate on the"
            " 98.5 % kept, 4 of 12 images to review; below the 95.0 % goal .") in text
    met = replace(r, review={**r.review, "accuracy_accepted": 0.96})
    assert "goal" not in render_section("calibration", met, figs={"reliability": "x"})


def test_model_card_review_share_matches_the_report(tmp_path):
    # The digits run: 4 of 265 to review is 1.5 % in the report; the card rounded it to "2%".
    r = _result(["a", "b"], n_images=265, review={**_result(["a", "b"]).review, "coverage": 261 / 265, "n_review": 4})
    bundle = Bundle("test_efficientnet", ["a", "b"], preprocessing=Preprocessing(input_size=32))
    bundle.path = tmp_path
    card = write_model_card(r, bundle).read_text()
    assert "go to human review: 1.5 % of test images (4 of 265);" in card
    assert "sent to human review" in render_section("summary", r) and "1.5 %" in render_section("summary", r)


def test_the_command_lines_summary_gives_a_targets_interval_as_the_report_does():
    """`sightline evaluate` printed 'PASS recall of crack >= 0.9 (got 0.962)' for 25 of 26 images, where the report
    and model card say the interval reaches below the target."""
    from sightline._cli.evaluate import target_line

    doubtful = {"target": "recall of crack >= 0.9", "value": 25 / 26, "n": 26, "low": 0.812, "high": 0.993,
                "conclusive": False, "passed": True}
    assert target_line(doubtful) == ("recall of crack >= 0.9 (got 0.962, 95% CI 0.812-0.993 on 26 images); not "
                                     "conclusive: the interval reaches the other side of the target")
    assert target_line({"target": "ece <= 0.05", "value": 0.031, "n": None, "conclusive": None}) == \
        "ece <= 0.05 (got 0.031)"
