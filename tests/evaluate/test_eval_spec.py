"""The problem definition: parsing, one-line errors naming the field, and the `init` template."""
from __future__ import annotations

import pytest

from sightline.errors import SpecError
from sightline.spec import find_spec, load_spec, write_spec_template

GOOD = """\
task: Find surface defects on machined parts before packing.
primary_metric: macro_f1
review_below_confidence: 0.6
costs:
  default: {false_positive: 1, false_negative: 1}
  crack: {false_positive: 1, false_negative: 50}
targets:
  - {metric: recall, class: crack, min: 0.98}
  - {metric: false_positive_rate, class: crack, max: 0.10}
  - {metric: accuracy, min: 0.90}
"""


def test_design_example_parses(tmp_path):
    (tmp_path / "sightline.yaml").write_text(GOOD)
    spec = find_spec(tmp_path)
    assert spec is not None and spec.review_below_confidence == 0.6
    assert spec.cost("crack").false_negative == 50 and spec.cost("scratch").false_negative == 1
    assert [t.describe() for t in spec.targets] == [
        "recall of crack >= 0.98", "false_positive_rate of crack <= 0.1", "accuracy >= 0.9"]
    spec.check_classes(["crack", "ok"])
    with pytest.raises(SpecError, match=r"unknown class\(es\) \['crack'\]"):
        spec.check_classes(["ants", "bees"])
    assert find_spec(tmp_path / "nope") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("primary_metric: speed\n", "primary_metric='speed' is unknown"),
        ("review_below_confidence: 2\n", "review_below_confidence=2 must be between 0 and 1"),
        ("targets:\n  - {metric: recall, min: 0.9}\n", r"targets\[0\]: metric 'recall' needs a 'class'"),
        ("targets:\n  - {metric: accuracy}\n", r"targets\[0\]: give 'min' or 'max'"),
        ("costs:\n  crack: {false_negative: lots}\n", "costs.crack.false_negative must be a number"),
        ("colour: blue\n", r"unknown field\(s\) \['colour'\]"),
        ("task: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_bad_spec_names_the_field(tmp_path, text, message):
    path = tmp_path / "sightline.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_template_lists_classes_is_valid_and_never_clobbers(tmp_path):
    path = write_spec_template(tmp_path, ["crack", "ok", "scratch"])
    text = path.read_text()
    for c in ("crack", "ok", "scratch"):
        assert f"class: {c}" in text
    assert "task:" in text and "primary_metric:" in text and "false_negative" in text
    assert load_spec(path).primary_metric == "macro_f1"
    with pytest.raises(SpecError, match="already exists"):
        write_spec_template(tmp_path, ["a", "b"])
