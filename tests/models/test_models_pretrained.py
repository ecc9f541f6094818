"""The bundled ImageNet EfficientNet-Lite weights, mapped by position onto timm, name real photographs correctly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from sightline.data.transforms import eval_preprocess, stack
from sightline.models import pretrained
from sightline.models.factory import BUNDLED_MODELS, create_model, default_preprocessing

ESPRESSO = 967  # ImageNet-1k class index
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _logits(model: torch.nn.Module, name: str, images: list[np.ndarray]) -> torch.Tensor:
    pre = default_preprocessing(name)
    x = torch.from_numpy(stack([eval_preprocess(Image.fromarray(a), pre) for a in images]))
    with torch.no_grad():
        return model.eval()(x)


def test_lite0_names_coffee_and_chelsea() -> None:
    model = create_model("tf_efficientnet_lite0", num_classes=1000, weights="auto")
    logits = _logits(model, "tf_efficientnet_lite0", [skdata.coffee(), skdata.chelsea()])
    assert logits.shape == (2, 1000)
    assert logits[0].argmax().item() == ESPRESSO
    assert CATS & set(logits[1].topk(3).indices.tolist())
    assert model.sightline_weights["notes"] == []  # 1000-class head kept


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_weights_map_every_tensor_and_reset_head(name: str) -> None:
    path = pretrained.packaged_weights_path(name)
    assert path is not None and path.is_file()
    source = [v for k, v in pretrained.read_state_dict(path).items() if not k.endswith("num_batches_tracked")]

    model = create_model(name, num_classes=3, weights="auto")
    target = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(source) == len(target)
    for (key, got), want in zip(target[:-2], source[:-2]):  # everything but classifier.weight/.bias
        assert torch.equal(got, want), key
    assert model.classifier.weight.shape == (3, source[-2].shape[1])
    assert "re-initialised for 3 classes" in model.sightline_weights["notes"][0]
    # the fresh head starts small (std 0.01, zero bias) so first-step logits on ImageNet features are near 0
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert not model.classifier.bias.any()


@pytest.mark.parametrize("name", BUNDLED_MODELS[1:])
def test_lite1_lite2_name_coffee(name: str) -> None:
    model = create_model(name, num_classes=1000, weights="auto")
    assert _logits(model, name, [skdata.coffee()])[0].argmax().item() == ESPRESSO


def test_default_preprocessing_follows_pretrained_cfg() -> None:
    pre = default_preprocessing("tf_efficientnet_lite0")
    assert (pre.input_size, pre.mean, pre.std, pre.interpolation, pre.crop_pct) == (
        224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875)
    assert default_preprocessing("lite2").input_size == 260
    small = default_preprocessing("tf_efficientnet_lite1", input_size=64)
    assert (small.input_size, small.crop_pct) == (64, pytest.approx(0.882))


def test_hub_probe_respects_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pretrained.hub_reachable() is False
