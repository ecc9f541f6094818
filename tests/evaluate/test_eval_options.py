"""EvaluateOptions: the keywords `evaluate` always took, validated in one place; every mistake is one line that
names the setting, raised before any file is read."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sightline.errors import UserInputError
from sightline.evaluate.options import EvaluateOptions, resolve_options
from sightline.evaluate.run import evaluate, evaluate_seeds


def test_keywords_lay_over_an_options_object():
    base = EvaluateOptions(n_bootstrap=200, robustness=False)
    got = resolve_options(base, split="val", out="here", severities=[2, 4])
    assert (got.split, got.n_bootstrap, got.robustness, got.out, got.severities) == ("val", 200, False,
                                                                                    Path("here"), (2, 4))
    assert base.split == "test" and resolve_options(base) is base  # frozen; nothing to lay over: the same object
    assert resolve_options() == EvaluateOptions()
    with pytest.raises(ValidationError, match="frozen"):
        base.split = "val"


@pytest.mark.parametrize("settings, message", [
    ({"n_boostrap": 5}, "evaluate options: n_boostrap is an unknown key; did you mean 'n_bootstrap'?"),
    ({"method": "magic"}, "evaluate options: method='magic' must be one of gradcam, gradcam++, eigencam, layercam."),
    ({"severities": (0, 3)}, "evaluate options: severities[0]=0 must be >= 1."),
    ({"split": "dev"}, "evaluate options: split='dev' must be 'train', 'val' or 'test'."),
    ({"batch_size": 0}, "evaluate options: batch_size=0 must be >= 1."),
    ({"spec": 3}, "evaluate options: spec=3 must be the path of a sightline.yaml or a ProblemSpec."),
])
def test_a_bad_setting_is_one_line_naming_it(settings, message):
    with pytest.raises(UserInputError) as info:
        resolve_options(**settings)
    assert str(info.value) == message
    with pytest.raises(UserInputError, match="^evaluate options: "):
        EvaluateOptions(**settings)  # built directly: the same line


def test_method_spellings_are_accepted_as_written():
    assert EvaluateOptions(method="GradCAM++").method == "GradCAM++"


@pytest.mark.parametrize("entry", [evaluate, evaluate_seeds])
def test_settings_fail_before_the_run_or_the_data_is_looked_at(entry, tmp_path):
    with pytest.raises(UserInputError, match="robustnes_images is an unknown key; did you mean 'robustness_images'"):
        entry(tmp_path / "no-run", tmp_path / "no-data", robustnes_images=5)
    with pytest.raises(UserInputError, match="must be an EvaluateOptions"):
        entry(tmp_path / "no-run", tmp_path / "no-data", {"split": "val"})
