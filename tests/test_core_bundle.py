from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sightline.bundle import Bundle, Preprocessing, load_bundle, resolve_bundle_dir
from sightline.errors import BundleError
from sightline.models.factory import create_model


def _tiny_bundle(tmp_path):
    model = create_model("test_efficientnet", num_classes=3, weights="none")
    bundle = Bundle(architecture="test_efficientnet", classes=["a", "b", "c"], preprocessing=Preprocessing(32))
    bundle.save(tmp_path / "run" / "bundle", model.state_dict())
    return bundle, model


def test_bundle_round_trip_gives_same_logits(tmp_path):
    bundle, model = _tiny_bundle(tmp_path)
    loaded = load_bundle(tmp_path / "run")  # a RUN folder resolves to RUN/bundle
    assert loaded.classes == ["a", "b", "c"]
    assert loaded.preprocessing == bundle.preprocessing
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.load_model()(x).numpy(), model.eval()(x).numpy(), atol=1e-6)


def test_write_json_keeps_later_stage_fields(tmp_path):
    _tiny_bundle(tmp_path)
    loaded = load_bundle(tmp_path / "run" / "bundle")
    loaded.temperature = 1.7
    loaded.thresholds = {"review_confidence": 0.6}
    loaded.metrics["val"] = {"accuracy": np.float64(0.9), "split": "val", "n_images": 10}
    loaded.write_json()
    again = load_bundle(tmp_path / "run" / "bundle" / "model.json")
    assert again.temperature == 1.7 and again.thresholds["review_confidence"] == 0.6
    assert again.metrics["val"]["accuracy"] == pytest.approx(0.9)


def test_missing_folder_and_bad_json_name_the_file(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        resolve_bundle_dir(tmp_path / "nope")
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="holds no model.json"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot be read"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "model.json").write_text(json.dumps({"architecture": "x", "classes": ["a"]}))
    with pytest.raises(BundleError, match="preprocessing"):
        load_bundle(tmp_path / "b")


def test_weights_that_do_not_fit_are_refused(tmp_path):
    bundle, _ = _tiny_bundle(tmp_path)
    other = create_model("test_efficientnet", num_classes=5, weights="none")
    bundle.save(bundle.path, other.state_dict())  # 5-class weights under a 3-class model.json
    with pytest.raises(BundleError):
        load_bundle(bundle.path).load_model()


@pytest.mark.parametrize("field,value", [("input_size", 2), ("crop_pct", 0.0), ("interpolation", "cubic")])
def test_preprocessing_validates(field, value):
    kwargs = {"input_size": 32, field: value}
    with pytest.raises(BundleError, match=field):
        Preprocessing(**kwargs)


def test_damaged_weights_and_bad_format_version_are_bundle_errors(tmp_path):
    bundle, _ = _tiny_bundle(tmp_path)
    bundle.weights_path.write_bytes(b"\xff" * 64)  # not a safetensors file
    with pytest.raises(BundleError, match="weights.safetensors"):
        load_bundle(bundle.path).load_model()
    data = json.loads((bundle.path / "model.json").read_text())
    data["format_version"] = "2"
    (bundle.path / "model.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(bundle.path)


def test_weights_are_as_readable_as_the_rest_of_the_bundle(tmp_path):
    """safetensors wrote weights.safetensors as 0600: a service or reviewer running as another user could read
    model.json and model.onnx but not the weights (explain, evaluate, a registry copy)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        model = create_model("test_efficientnet", 2, weights="none")
        folder = Bundle("test_efficientnet", ["a", "b"], preprocessing=Preprocessing(32)).save(tmp_path / "b",
                                                                                               model.state_dict())
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["weights.safetensors"] == modes["model.json"] == 0o644, modes
