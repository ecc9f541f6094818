"""The input size follows the data: the model's size for large images, 128 px for very small ones (BiT's rule), a
measured choice in between; small images also get the small-image recipe."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sightline.train.fit import train
from sightline.train.input_size import (MIN_SIZE, SMALL_INPUT, candidate_sizes, choose_input_size, native_side,
                                        small_images)

from test_train_fit import TINY, make_data


# precision and memory format as set, not timed on this CPU (sightline.train.hardware; test_train_hardware.py)
AS_SET = {"precision": "32-true", "channels_last": False}


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


def test_very_small_images_are_upsampled_to_128_px_without_a_probe() -> None:
    """BiT's HyperRule: below 96 px, 128 px; scikit-learn's 8 px digits and 64 px photos alike, no probe run."""
    probe = _Probe({})
    for side in (8, 40, 64, 95):
        choice = choose_input_size("auto", 224, _samples((side, side), (side, side + 10)), probe=probe)
        assert (choice.size, choice.native, choice.probe) == (SMALL_INPUT, side, {}) and probe.calls == []
        assert choice.why.startswith(f"128 px for {side} px images: below 96 px, images are upsampled to 128 px")
    # a model pretrained at 160 px: 128 px is close to it, so its own size
    assert choose_input_size("auto", 160, _samples((40, 40)), probe=probe).size == 160 and probe.calls == []
    assert small_images(64, 224) and small_images(100, 224) and not small_images(180, 224)
    assert not small_images(None, 224)


def test_small_images_are_probed_and_the_native_size_wins_a_tie() -> None:
    probe = _Probe({96: 0.90, 224: 0.905})
    choice = choose_input_size("auto", 224, _samples((96, 96), (96, 120), (90, 96)), probe=probe, n_val=300)
    assert probe.calls == [96, 224] and choice.size == 96
    assert choice.why.startswith("96 px for 96 px images: the smallest size within 0.010 of the best")
    assert "224 px val acc 0.905" in choice.why and set(choice.probe) == {96, 224}


def test_the_climb_goes_on_while_accuracy_pays_for_the_pixels() -> None:
    probe = _Probe({100: 0.70, 200: 0.85, 400: 0.855})
    choice = choose_input_size("auto", 400, _samples((100, 100)), probe=probe, n_val=300)
    assert probe.calls == [100, 200, 400] and choice.size == 200  # 400 px is within the tolerance of 200 px
    probe = _Probe({100: 0.70, 200: 0.80, 400: 0.90})
    assert choose_input_size("auto", 400, _samples((100, 100)), probe=probe, n_val=300).size == 400


def test_a_probe_at_chance_level_does_not_choose() -> None:
    """10 classes: a pass that learned nothing (0.142, 0.096, ...) must not pick a size on noise."""
    probe = _Probe({100: 0.142, 200: 0.096, 400: 0.13})
    choice = choose_input_size("auto", 400, _samples((100, 100)), probe=probe, n_val=256, chance=0.1)
    assert probe.calls == [100, 200, 400]  # nothing above chance: the climb went on
    assert choice.size == 400 and "learned nothing measurable" in choice.why and "0.100" in choice.why
    # once a size clears chance by 3 standard errors (0.157 here), the usual rule applies from there
    probe = _Probe({100: 0.40, 200: 0.405, 400: 0.9})
    choice = choose_input_size("auto", 400, _samples((100, 100)), probe=probe, n_val=256, chance=0.1)
    assert probe.calls == [100, 200] and choice.size == 100
    # without a chance level every result counts, as before
    probe = _Probe({100: 0.142, 200: 0.096, 400: 0.13})
    assert choose_input_size("auto", 400, _samples((100, 100)), probe=probe, n_val=256).size == 100


def test_requested_sizes_and_the_floor() -> None:
    assert choose_input_size(96, 224, _samples((500, 500))).size == 96
    assert choose_input_size(96, 224, _samples((8, 8))).native == 8  # recorded: the small-image recipe reads it
    assert choose_input_size(None, 224, _samples((40, 40))).size == 224
    # candidates never go below what the network can take
    assert candidate_sizes(8, 224)[0] == MIN_SIZE
    assert native_side([]) is None


def _resized(data: Path, side: int) -> Path:
    """make_data's 40 px patches resized to `side` px, in place."""
    from PIL import Image

    for path in data.rglob("*.png"):
        with Image.open(path) as im:
            im.resize((side, side)).save(path)
    return data


def test_train_probes_small_images_and_records_the_choice(tmp_path: Path) -> None:
    """100 px images and a model whose pretrained size is 160 px: probed at 100 and 160 px; the choice, why, and
    the probe's figures are kept in metrics.json, and the resolved size is in config.yaml."""
    # 4 + 2 images a class (12 + 6 before): the probe's passes and the training after them see them all; the choice
    # is recorded whatever the accuracies are
    data = _resized(make_data(tmp_path / "data", splits={"train": 4, "val": 2}), 100)
    # reference=False: the monitor's profile (stand-in images scored at the chosen size) is not under test here;
    # nor is the hardware probe (test_train_hardware.py): fp32, contiguous, as set
    run = train(data, tmp_path / "run", progress=False, **{**TINY, "epochs": 1, "input_size": "auto",
                                                          "reference": False, **AS_SET})
    choice = json.loads((run / "metrics.json").read_text())["choices"]["input_size"]
    assert choice["native"] == 100 and "100" in choice["probe"] and set(choice["probe"]) <= {"100", "160"}
    assert str(choice["value"]) in choice["probe"]
    assert all(0.0 <= p["val_acc"] <= 1.0 and p["seconds"] > 0 for p in choice["probe"].values())
    config = (run / "config.yaml").read_text()
    assert f"\ninput_size: {choice['value']}\n" in config and "# input_size: " in config
    from sightline.bundle import load_bundle

    assert load_bundle(run).preprocessing.input_size == choice["value"]


def test_small_images_get_the_small_image_recipe_and_say_so(tmp_path: Path) -> None:
    """40 px images, pretrained weights (a file here): no probe, the model's 160 px (128 px is close to it), and
    SMALL_IMAGE_RECIPE's bounds replace the config's slower values; each change is printed, kept in metrics.json
    and in config.yaml (values and the why); small_image_recipe: false, a size not above the native one, or values
    already past the bounds keep the config's values."""
    from safetensors.torch import save_file

    from sightline.models.factory import create_model
    from sightline.train.config import SMALL_IMAGE_RECIPE, TrainConfig, load_config

    # 4 + 2 images per class: the recipe depends on the images' side, not on how many there are; five trainings
    # at up to 160 px follow, each without the monitor's reference profile (stand-ins scored at 160 px) and without
    # the hardware probe (its candidates timed at 160 px: two thirds of this test's CPU); neither is under test
    data = make_data(tmp_path / "data", splits={"train": 4, "val": 2})
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("test_efficientnet", 2, weights="none").state_dict().items()},
              str(weights))
    options = {**TINY, "epochs": 1, "input_size": "auto", "weights": str(weights), "reference": False, **AS_SET}
    said: list[str] = []
    import logging

    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("sightline.train").addHandler(handler)
    logging.getLogger("sightline.train").setLevel(logging.INFO)
    try:
        run = train(data, tmp_path / "run", progress=False, **options)
    finally:
        logging.getLogger("sightline.train").removeHandler(handler)
    choices = json.loads((run / "metrics.json").read_text())["choices"]
    assert choices["input_size"]["value"] == 160 and choices["input_size"]["probe"] == {}
    defaults = TrainConfig()
    assert choices["small_images"]["value"] == SMALL_IMAGE_RECIPE  # the defaults are slower on all three
    assert f"backbone_lr_scale {defaults.backbone_lr_scale:g} -> " in choices["small_images"]["why"]
    assert any(line.startswith("small images: 40 px training images") for line in said)
    cfg = load_config(run / "config.yaml")
    assert (cfg.backbone_lr_scale, cfg.warmup_epochs, cfg.patience) == (
        SMALL_IMAGE_RECIPE["backbone_lr_scale"], SMALL_IMAGE_RECIPE["warmup_epochs"], SMALL_IMAGE_RECIPE["patience"])
    assert "# small_images: 40 px training images" in (run / "config.yaml").read_text()
    # switched off: the config's values as they are, and no small-image choice
    run = train(data, tmp_path / "off", progress=False, **options, small_image_recipe=False)
    assert "small_images" not in json.loads((run / "metrics.json").read_text())["choices"]
    assert load_config(run / "config.yaml").backbone_lr_scale == defaults.backbone_lr_scale
    # a requested size above the native one is upsampling too
    run = train(data, tmp_path / "asked", progress=False, **{**options, "input_size": 64})
    assert json.loads((run / "metrics.json").read_text())["choices"]["small_images"]["value"] == SMALL_IMAGE_RECIPE
    # not upsampled (trained at or below their own size, as the demo's surfaces): the config's values
    run = train(data, tmp_path / "native", progress=False, **{**options, "input_size": 32})
    assert "small_images" not in json.loads((run / "metrics.json").read_text())["choices"]
    # values past the bounds are kept (a faster backbone, a shorter warm-up, more patience)
    run = train(data, tmp_path / "past", progress=False, **options, backbone_lr_scale=1.0, warmup_epochs=0.0,
                patience=3)
    assert json.loads((run / "metrics.json").read_text())["choices"]["small_images"]["value"] == {}
    cfg = load_config(run / "config.yaml")
    assert (cfg.backbone_lr_scale, cfg.warmup_epochs, cfg.patience) == (1.0, 0.0, 3)


@pytest.mark.parametrize("value", ["big", 8])
def test_bad_input_size_is_one_line(value: object) -> None:
    from sightline.errors import UserInputError
    from sightline.train.config import TrainConfig

    with pytest.raises(UserInputError, match=r"input_size=.* must be a whole number of pixels >= 16, 'auto' or null"):
        TrainConfig(input_size=value)
