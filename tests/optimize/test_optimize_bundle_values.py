"""model.json values that load but cannot be used (hand-edited, or damaged): export, predict, evaluate and bench all
read the bundle through load_bundle, which now refuses them in one line. Before, each ran: NaN confidences (a
temperature or std of 0), inverted ones (a negative temperature), one mean broadcast over three channels, two outputs
under one class name, or an AttributeError traceback (thresholds that are not an object)."""
from __future__ import annotations

import json

import pytest

from sightline.bundle import load_bundle
from sightline.errors import BundleError

GOOD = {"format_version": 1, "architecture": "test_efficientnet", "classes": ["a", "b"],
        "preprocessing": {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        "temperature": 1.5, "thresholds": {}}


@pytest.mark.parametrize(("change", "words"), [
    ({"classes": ["a", "a"]}, "'classes' lists 'a' more than once"),
    ({"temperature": 0}, "temperature=0 must be a positive number"),
    ({"temperature": -1.0}, "temperature=-1.0 must be a positive number"),
    ({"temperature": float("nan")}, "temperature=nan must be a positive number"),
    ({"temperature": "2"}, "temperature='2' must be a positive number"),
    ({"thresholds": "x"}, "'thresholds' must be a JSON object"),
    ({"preprocessing": {**GOOD["preprocessing"], "std": [0, 0, 0]}}, "std above 0"),
    ({"preprocessing": {**GOOD["preprocessing"], "mean": [0.5]}}, "must be 3 finite numbers each"),
    ({"thresholds": {"review_confidence": 1.5}}, "review_confidence=1.5 must be a probability from 0 to 1"),
    ({"thresholds": {"review_confidence": "0.5"}}, "review_confidence='0.5' must be a probability"),
    ({"thresholds": {"class_thresholds": {"c": 0.9}}}, "class_thresholds['c']=0.9: each key must be one of"),
    ({"thresholds": {"class_thresholds": {"a": 2}}}, "class_thresholds['a']=2"),
    ({"thresholds": {"class_thresholds": []}}, "class_thresholds must be a JSON object"),
])
def test_unusable_values_are_one_line(tmp_path, change, words):
    (tmp_path / "model.json").write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(BundleError, match="model.json") as caught:
        load_bundle(tmp_path)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_usable_values_still_load(tmp_path):
    thresholds = {"review_confidence": 0.6, "class_thresholds": {"b": 0.3}}
    (tmp_path / "model.json").write_text(json.dumps({**GOOD, "temperature": 2, "thresholds": thresholds}))
    assert load_bundle(tmp_path).temperature == 2 and load_bundle(tmp_path).thresholds == thresholds
    (tmp_path / "model.json").write_text(json.dumps({**GOOD, "thresholds": {"review_confidence": None}}))
    assert load_bundle(tmp_path).thresholds == {"review_confidence": None}


def test_predict_refuses_a_zero_temperature(tmp_path, run_cli):
    (tmp_path / "model.json").write_text(json.dumps({**GOOD, "temperature": 0}))
    (tmp_path / "x.png").write_bytes(b"")
    code, out = run_cli(["predict", str(tmp_path), str(tmp_path / "x.png")])
    assert code == 2 and "Traceback" not in out.err and "temperature=0 must be a positive number" in out.err
