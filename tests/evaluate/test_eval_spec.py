"""The problem definition: parsing, one-line errors naming the field, and the `init` template."""
from __future__ import annotations

import pytest

from sightline.errors import SpecError
from sightline.spec import Cost, ProblemSpec, Target, find_spec, load_spec, parse_spec, write_spec_template

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
        ("primary_metric: speed\n", "primary_metric='speed' is unknown; use one of accuracy, balanced_accuracy, "
                                     "macro_f1, expected_cost or recall:<class>."),
        ("primary_metric: 'recall:'\n", "primary_metric='recall:' is unknown"),
        ("primry_metric: accuracy\n", "primry_metric is an unknown key; did you mean 'primary_metric'?"),
        ("colour: blue\n", "colour is an unknown key; known keys: task, primary_metric, review_below_confidence, "
                           "costs, targets, promotion, monitor."),
        ("task: [a, b]\n", "task must be text."),
        ("- task\n", "sightline.yaml: must be a mapping of key: value."),
        # an Optional[float]: null is fine, anything but a share is not
        ("review_below_confidence: 2\n", "review_below_confidence=2 must be <= 1."),
        ("review_below_confidence: high\n", "review_below_confidence='high' must be a number or null."),
        ("review_below_confidence: true\n", "review_below_confidence=True must be a number, not true or false."),
        ("costs:\n  crack: {false_negative: lots}\n", "costs.crack.false_negative='lots' must be a number."),
        ("costs:\n  crack: {false_negative: -1}\n", "costs.crack.false_negative=-1 must be >= 0."),
        ("costs:\n  crack: 5\n", "costs.crack=5 must be a mapping of key: value."),
        ("costs:\n  crack: {fn: 5}\n", "costs.crack.fn is an unknown key; known keys: false_positive, false_negative."),
        ("costs: [1, 2]\n", "costs must be a mapping of key: value."),
        ("targets:\n  metric: accuracy\n", "targets must be a list."),
        ("targets:\n  - {min: 0.9}\n", "targets[0].metric is missing; add it."),
        ("targets:\n  - {metric: speed, min: 1}\n", "targets[0].metric='speed' must be 'accuracy', 'balanced_accuracy'"),
        ("targets:\n  - {metric: recall, min: 0.9}\n", "targets[0]: metric 'recall' needs a 'class'."),
        ("targets:\n  - {metric: accuracy, class: crack, min: 0.9}\n",
         "targets[0]: metric 'accuracy' is about all classes; remove 'class'."),
        ("targets:\n  - {metric: accuracy}\n", "targets[0]: give 'min' or 'max'."),
        ("targets:\n  - {metric: accuracy, min: 0.9}\n  - {metric: recall, class: crack, min: 1.5}\n",
         "targets[1].min=1.5 must be <= 1 (recall is a share between 0 and 1)."),
        ("targets:\n  - {metric: recall, clas: crack, min: 0.9}\n", "targets[0].clas is an unknown key; did you mean 'class'?"),
        ("targets:\n  - {metric: recall, class_name: crack, min: 0.9}\n",
         "targets[0].class_name is an unknown key; did you mean 'class'?"),
        ("task: [unclosed\n", "is not valid YAML at line 2; fix the syntax."),
    ],
)
def test_bad_spec_names_the_field(tmp_path, text, message):
    path = tmp_path / "sightline.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    got = str(info.value)
    assert got.startswith(str(path)) and message.replace("sightline.yaml: ", "") in got, got
    assert "\n" not in got


def test_several_mistakes_are_named_together(tmp_path):
    path = tmp_path / "sightline.yaml"
    path.write_text("review_below_confidence: 2\ncosts:\n  crack: {false_negative: lots}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == (f"{path}: review_below_confidence=2 must be <= 1; "
                               "costs.crack.false_negative='lots' must be a number.")


def test_empty_keys_and_file_mean_defaults_and_python_names_work(tmp_path):
    path = tmp_path / "sightline.yaml"
    path.write_text("task:\nprimary_metric:\ncosts:\ntargets:\nreview_below_confidence:\n")
    spec = load_spec(path)
    assert spec.model_dump() == ProblemSpec().model_dump() and spec.path == path and spec.task == "" and spec.cost("x") == Cost()
    path.write_text("")
    assert load_spec(path).primary_metric == "macro_f1"
    assert parse_spec(None).path is None
    target = Target(metric="recall", class_name="crack", min=0.9)  # in code the class is `class_name`
    assert target.describe() == "recall of crack >= 0.9" and target.passes(0.95) and not target.passes(0.5)
    spec = parse_spec({"primary_metric": "recall:crack", "targets": [{"metric": "expected_cost", "max": 5000}]})
    assert spec.targets[0].max == 5000 and spec.primary_metric == "recall:crack"
    with pytest.raises(SpecError, match=r"sightline.yaml names unknown class\(es\) \['crack'\]"):
        spec.check_classes(["ants", "bees"])


def test_template_lists_classes_is_valid_and_never_clobbers(tmp_path):
    path = write_spec_template(tmp_path, ["crack", "ok", "scratch"])
    text = path.read_text()
    for c in ("crack", "ok", "scratch"):
        assert f"class: {c}" in text
    assert "task:" in text and "primary_metric:" in text and "false_negative" in text
    assert load_spec(path).primary_metric == "macro_f1"
    with pytest.raises(SpecError, match="already exists"):
        write_spec_template(tmp_path, ["a", "b"])


def test_template_lines_for_any_class_name_read_back_as_that_name(tmp_path):
    """`init` wrote class names bare into the commented cost and target lines: uncommented, 'yes' read back as true,
    'null' as null, 'a: b' and '[x]' were not valid YAML and '#c' a comment."""
    import re

    classes = ["yes", "null", "on", "1e3", "a: b", "#c", "[x]", "'q", '"dq', "fourmi é", "crack"]
    text = write_spec_template(tmp_path, classes).read_text()
    opened = re.sub(r"^(\s*)# (- \{metric: recall|\S.*: \{false_positive)", r"\1\2", text, flags=re.M)
    (tmp_path / "sightline.yaml").write_text(opened)
    spec = load_spec(tmp_path / "sightline.yaml")
    assert sorted(spec.costs) == sorted(["default", *classes])
    assert sorted(t.class_name for t in spec.targets if t.class_name) == sorted(classes)
    assert "class: crack," in text and "class: fourmi é," in text  # plain names stay bare


def test_a_data_folder_stands_for_its_sightline_yaml(tmp_path):
    # `evaluate --spec DATA` reads DATA/sightline.yaml, as `serve --spec` and `monitor --spec` do.
    (tmp_path / "sightline.yaml").write_text("task: sort parts\n")
    assert load_spec(tmp_path).task == "sort parts"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match=r"empty/sightline.yaml cannot be read"):
        load_spec(empty)
