"""The input size follows the data: the model's size for large images, a measured choice for small ones."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sightline.train.fit import train
from sightline.train.input_size import MIN_SIZE, candidate_sizes, choose_input_size, native_side

from test_train_fit import TINY, make_data


def _samples(*sizes: tuple[int, int]) -> list[SimpleNamespace]:
    return [SimpleNamespace(width=w, height=h) for w, h in sizes]


class _Probe:
    def __init__(self, acc: dict[int, float]) -> None:
        self.acc, self.calls = acc, []

    def __call__(self, size: int) -> dict[str, float]:
        self.calls.append(size)
        return {"val_acc": self.acc[size], "val_loss": 1.0 - self.acc[size]}


def test_large_images_train_at_the_models_size_without_a_probe() -> None:
    probe = _Probe({})
    choice = choose_input_size("auto", 224, _samples((500, 375), (375, 500), (640, 480)), probe=probe)
    assert choice.size == 224 and choice.native == 375 and probe.calls == []
    assert "median shorter side (375 px) is at least the model's pretrained size (224 px)" in choice.why
    # Close to the model's size is not worth a probe either.
    assert choose_input_size("auto", 224, _samples((200, 200)), probe=probe).size == 224 and probe.calls == []


def test_candidates_double_from_the_native_size() -> None:
    assert candidate_sizes(64, 224) == [64, 128, 224]
    assert candidate_sizes(8, 224) == [MIN_SIZE, 64, 128, 224]
    assert candidate_sizes(96, 224) == [96, 224]  # 192 is close to 224: the pretrained size instead
    assert candidate_sizes(40, 160) == [40, 80, 160]


def test_small_images_are_probed_and_the_native_size_wins_a_tie() -> None:
    probe = _Probe({64: 0.90, 128: 0.905, 224: 0.99})
    choice = choose_input_size("auto", 224, _samples((64, 64), (64, 80), (60, 64)), probe=probe, n_val=300)
    # 128 px is no better than 64 px: the climb stops there, 224 px is never tried.
    assert probe.calls == [64, 128] and choice.size == 64
    assert choice.why.startswith("64 px for 64 px images: the smallest size within 0.010 of the best")
    assert "128 px val acc 0.905" in choice.why and set(choice.probe) == {64, 128}


def test_the_climb_goes_on_while_accuracy_pays_for_the_pixels() -> None:
    probe = _Probe({64: 0.70, 128: 0.85, 224: 0.855})
    choice = choose_input_size("auto", 224, _samples((64, 64)), probe=probe, n_val=300)
    assert probe.calls == [64, 128, 224] and choice.size == 128  # 224 px is within the tolerance of 128 px
    probe = _Probe({64: 0.70, 128: 0.80, 224: 0.90})
    assert choose_input_size("auto", 224, _samples((64, 64)), probe=probe, n_val=300).size == 224


def test_a_probe_at_chance_level_does_not_choose() -> None:
    """8 px digits, 10 classes: one short pass gave 0.142 at 32 px and 0.096 at 64 px; 32 px won on noise."""
    probe = _Probe({MIN_SIZE: 0.142, 64: 0.096, 128: 0.11, 224: 0.13})
    choice = choose_input_size("auto", 224, _samples((8, 8)), probe=probe, n_val=256, chance=0.1)
    assert probe.calls == [MIN_SIZE, 64, 128, 224]  # nothing above chance: the climb went on
    assert choice.size == 224 and "learned nothing measurable" in choice.why and "0.100" in choice.why
    # once a size clears chance by 3 standard errors (0.157 here), the usual rule applies from there
    probe = _Probe({MIN_SIZE: 0.142, 64: 0.40, 128: 0.405, 224: 0.9})
    choice = choose_input_size("auto", 224, _samples((8, 8)), probe=probe, n_val=256, chance=0.1)
    assert probe.calls == [MIN_SIZE, 64, 128] and choice.size == 64
    # without a chance level every result counts, as before
    probe = _Probe({MIN_SIZE: 0.142, 64: 0.096, 128: 0.11, 224: 0.13})
    assert choose_input_size("auto", 224, _samples((8, 8)), probe=probe, n_val=256).size == MIN_SIZE


def test_requested_sizes_and_the_floor() -> None:
    assert choose_input_size(96, 224, _samples((500, 500))).size == 96
    assert choose_input_size(None, 224, _samples((40, 40))).size == 224
    # 8 px images (scikit-learn's digits) are probed from MIN_SIZE, not below what the network can take.
    probe = _Probe({MIN_SIZE: 0.9, 64: 0.9, 128: 0.9, 224: 0.9})
    assert choose_input_size("auto", 224, _samples((8, 8)), probe=probe).size == MIN_SIZE
    assert probe.calls == [MIN_SIZE, 64]
    assert native_side([]) is None


def test_train_probes_small_images_and_records_the_choice(tmp_path: Path) -> None:
    """40 px images and a model whose pretrained size is 160 px: probed from 40 px up; the choice, why, and the
    probe's figures are kept in metrics.json, and the resolved size is in config.yaml."""
    data = make_data(tmp_path / "data")
    run = train(data, tmp_path / "run", progress=False, **{**TINY, "epochs": 1, "input_size": "auto"})
    choice = json.loads((run / "metrics.json").read_text())["choices"]["input_size"]
    assert choice["native"] == 40 and "40" in choice["probe"] and set(choice["probe"]) <= {"40", "80", "160"}
    assert str(choice["value"]) in choice["probe"]
    assert all(0.0 <= p["val_acc"] <= 1.0 and p["seconds"] > 0 for p in choice["probe"].values())
    config = (run / "config.yaml").read_text()
    assert f"\ninput_size: {choice['value']}\n" in config and "# input_size: " in config
    from sightline.bundle import load_bundle

    assert load_bundle(run).preprocessing.input_size == choice["value"]


@pytest.mark.parametrize("value", ["big", 8])
def test_bad_input_size_is_one_line(value: object) -> None:
    from sightline.errors import UserInputError
    from sightline.train.config import TrainConfig

    with pytest.raises(UserInputError, match=r"input_size=.* must be a whole number of pixels >= 16, 'auto' or null"):
        TrainConfig(input_size=value)
