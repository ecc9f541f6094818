"""evaluate on datasets as they arrive from the field."""
from __future__ import annotations

import numpy as np
from PIL import Image


def test_a_class_missing_from_the_evaluated_split_is_said(tmp_path):
    """A dataset split elsewhere whose test/ has no 'c' images: the table read 'c: recall 0.000, F1 0.000' as if the
    model never found one, macro-F1 counted that 0, and nothing said the class had no test image."""
    import torch

    from sightline.bundle import Bundle, Preprocessing
    from sightline.evaluate.run import evaluate
    from sightline.models.factory import create_model

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in ("a", "b", "c"):
            if split == "test" and c == "c":
                continue
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    torch.manual_seed(0)
    Bundle("test_efficientnet", ["a", "b", "c"], Preprocessing(32), name="t", version="1").save(
        tmp_path / "bundle", create_model("test_efficientnet", 3, weights="none").state_dict())
    result = evaluate(tmp_path / "bundle", tmp_path / "data", robustness=False, report=False, update_bundle=False,
                      n_bootstrap=10, gallery_per_group=0, reference=False, out=tmp_path / "eval")
    assert result.per_class["c"]["support"] == 0
    assert result.warning is not None and "test has no image of 'c'" in result.warning
    assert "re-split" in result.warning
    from sightline.evaluate.figures import _absent_classes

    assert _absent_classes({"a": {"support": 3}, "b": {"support": 1}}, "val") is None


def test_a_split_folder_given_for_the_dataset_is_named_as_such(tmp_path):
    """`evaluate RUN --data DATA/test` where test/ lacks a class: 'classes of the model and of DATA/test differ:
    model has ['c'] that the dataset lacks' sent the user after the classes; the hint that DATA/test is a split
    of DATA, and to pass DATA, came only when every class happened to be there."""
    import pytest

    from sightline.bundle import Bundle, Preprocessing
    from sightline.errors import DatasetError
    from sightline.evaluate.run import evaluate
    from sightline.models.factory import create_model

    for c in ("a", "b"):
        (tmp_path / "data" / "test" / c).mkdir(parents=True)
        Image.new("RGB", (24, 24), (40, 90, 200)).save(tmp_path / "data" / "test" / c / "0.png")
    Bundle("test_efficientnet", ["a", "b", "c"], Preprocessing(32), name="t", version="1").save(
        tmp_path / "bundle", create_model("test_efficientnet", 3, weights="none").state_dict())
    with pytest.raises(DatasetError, match="looks like the test/ split of a dataset: pass its parent folder"):
        evaluate(tmp_path / "bundle", tmp_path / "data" / "test", robustness=False, report=False,
                 update_bundle=False, reference=False, out=tmp_path / "eval")


def test_a_small_perfect_test_split_gets_an_interval_not_a_point():
    """8 of 8 test images right read 'accuracy 1.000 (95% CI 1.000-1.000)': every bootstrap resample of a perfect
    (or all-wrong) split has the same accuracy and balanced accuracy, so their percentile intervals were a point.
    They get the Wilson interval; a split with both kinds of answer keeps the bootstrap."""
    from sightline.evaluate.metrics import bootstrap_ci
    from sightline.monitor.estimate import wilson_interval

    y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    ci = bootstrap_ci(y, y, 3, n_resamples=50)
    low, high = wilson_interval(8, 8)
    assert 0.6 < low < 0.7 and high == 1.0
    for m in ("accuracy", "balanced_accuracy"):
        assert (ci[m]["low"], ci[m]["high"]) == (low, high) and "Wilson" in ci[m]["method"]
    assert "method" not in ci["macro_f1"] and ci["macro_f1"]["low"] < 1.0  # a resample can miss a class
    wrong = bootstrap_ci(y, (y + 1) % 3, 3, n_resamples=50)
    for m in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert wrong[m]["low"] == 0.0 and wrong[m]["high"] > 0.3
    one_off = bootstrap_ci(y, np.array([0, 0, 0, 1, 1, 1, 2, 0]), 3, n_resamples=200)
    assert "method" not in one_off["accuracy"] and one_off["accuracy"]["low"] < 0.875 <= one_off["accuracy"]["high"]


def test_a_region_file_no_image_uses_is_not_an_unreadable_image_of_the_split(tmp_path):
    """The scan lists a region file that no image claims (IMG_2.XML); evaluate and export count the split's listed
    files as its unreadable images, and would have named an annotation as one."""
    from sightline.data.splits import load_split
    from sightline.preprocessing import Preprocessing

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            Image.new("RGB", (24, 24), (40, 90, 200)).save(tmp_path / "data" / split / c / "0.png")
    (tmp_path / "data" / "test" / "a" / "0.XML").write_text("<annotation/>")
    (tmp_path / "data" / "test" / "a" / "x.txt").write_text("notes")
    crops = load_split(tmp_path / "data", "test", classes=["a", "b"], preprocessing=Preprocessing(16))
    assert [d["path"] for d in crops.skipped] == ["test/a/x.txt"]


def test_the_report_and_card_say_n_a_for_a_class_without_an_image_in_the_split(tmp_path):
    """The per-class tables read 'c: recall 0.000, F1 0.000' for a class with no test image, as if it were never
    found; they say n/a, and why, while the figures (and metrics.json) keep sklearn's 0."""
    import sys
    from dataclasses import replace
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_eval_report import _result

    from sightline.bundle import Bundle, Preprocessing
    from sightline.evaluate.report import render_section, write_model_card

    r = _result(["a", "b", "c"])
    per_class = {**r.per_class, "c": {**r.per_class["c"], "recall": 0.0, "f1": 0.0, "support": 0}}
    r = replace(r, per_class=per_class)
    table = render_section("per_class", r, figs={"confusion": ""})
    assert table.count("n/a") == 3 and "no test image of the class" in table
    rows = [line for line in table.splitlines() if line.startswith("<tr><td>")]
    assert "n/a" not in rows[0] and rows[2].count("n/a") == 2
    bundle = Bundle("test_efficientnet", ["a", "b", "c"], Preprocessing(32))
    bundle.path = tmp_path
    card = write_model_card(r, bundle).read_text()
    assert "| c | " in card and "| n/a | n/a | 0 |" in card and "no test image of the class" in card
    assert "n/a" not in render_section("per_class", _result(["a", "b"]), figs={"confusion": ""})


def test_the_report_of_a_dataset_in_a_folder_named_in_latin1_is_written(tmp_path, monkeypatch):
    """`evaluate RUN --data r\\xe9sultats/`: every figure computed, then report.html could not be written
    (UnicodeEncodeError) since it names the dataset's folder; the name is written with \\x escapes."""
    import os
    import sys
    from collections import defaultdict
    from dataclasses import replace
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_eval_report import _result

    from sightline.bundle import Bundle, Preprocessing
    from sightline.evaluate import report
    from sightline.evaluate.report import write_model_card, write_report

    # the page's text without its matplotlib plots (0.3 s of CPU; drawn in test_eval_report): the name is in the text
    monkeypatch.setattr(report, "plots", lambda r: defaultdict(str))
    folder = os.fsdecode(b"/data/r\xe9sultats")
    r = _result(["a", "b"])
    r = replace(r, data={**r.data, "root": folder}, model={**r.model, "path": folder + "/run/bundle"})
    page = write_report(r, tmp_path / "report.html", gallery=[]).read_text(encoding="utf-8")
    assert "/data/r\\xe9sultats" in page
    bundle = Bundle("test_efficientnet", ["a", "b"], Preprocessing(32))
    bundle.path = tmp_path
    write_model_card(r, bundle).read_text(encoding="utf-8")


def test_classes_missing_from_val_are_said_to_be_left_out_of_the_fit():
    """val with only 'a' images (a hand-made split): the temperature and thresholds were fitted on it for every
    class, and only training had warned. The evaluated split's warning says so."""
    from sightline.evaluate.figures import _unfitted_classes, fit_on_val

    rng = np.random.default_rng(0)
    fitted = fit_on_val(rng.normal(size=(6, 3)), np.zeros(6, dtype=np.int64), ["a", "b", "c"], problem=None,
                        bundle_temperature=1.0, bundle_thresholds={})
    assert fitted.val_missing == ["b", "c"]
    said = _unfitted_classes(fitted.val_missing)
    assert said.startswith("val has no image of 'b', 'c', so the temperature and thresholds were chosen without them")
    assert _unfitted_classes([]) is None
