"""The inference core: one forward pass gives logits, pooled features and the classic CAM for every model family
we ship; the CAM equals pytorch-grad-cam's Grad-CAM of the same layer on real photos; ONNX files from before
features existed still serve; engines release their threads; one timing helper."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_tiny

from sightline.bundle import Bundle
from sightline.errors import BundleError
from sightline.inference import (
    Engine,
    OnnxBackend,
    Output,
    TorchBackend,
    open_engine,
    scale_cams,
    time_calls,
)
from sightline.models.factory import BUNDLED_MODELS, create_model
from sightline.preprocessing import Preprocessing

CLASSES = ["a", "b", "c"]


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", *BUNDLED_MODELS])
def test_one_pass_gives_the_models_logits_its_pooled_features_and_a_cam(name):
    torch.manual_seed(0)
    model = create_model(name, len(CLASSES), weights="none").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x).numpy()
        pooled = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    out = TorchBackend(model, device="cpu").run(x.numpy())
    np.testing.assert_allclose(out.logits, ref, atol=1e-4)
    np.testing.assert_allclose(out.features, pooled, atol=1e-4)
    assert out.features.shape == (2, model.num_features)
    # classic CAM: the feature maps weighted by the top class's classifier row; its spatial mean is that logit
    # minus the bias (global average pool + linear head), an identity that holds only for the right row
    bias = model.get_classifier().bias.detach().numpy()
    top = ref.argmax(1)
    np.testing.assert_allclose(out.cams.mean(axis=(1, 2)) + bias[top], ref[np.arange(2), top], atol=1e-3)


@pytest.mark.parametrize("name,side", [("test_vit", 160), ("test_convnext", 64)])
def test_a_head_that_is_not_pool_plus_linear_gives_no_cam(name, side):
    # a ViT has no feature map; ConvNeXt normalises after its pool, so feature maps times the classifier row
    # would not be what the logits are made of
    model = create_model(name, len(CLASSES), weights="none").eval()
    x = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
    out = TorchBackend(model, device="cpu").run(x)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out.logits, ref, atol=1e-4)
    assert out.cams is None and out.features.shape == (2, model.num_features)


def _photos(size: int) -> np.ndarray:
    """Real photographs shipped by scikit-image, center-cropped to (N, size, size, 3) uint8."""
    from PIL import Image
    from skimage import data

    from sightline.data.transforms import resize_center_crop

    pre = Preprocessing(size, crop_pct=0.875)
    photos = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket()]
    return np.stack([np.asarray(resize_center_crop(Image.fromarray(p).convert("RGB"), pre)) for p in photos])


def test_cam_equals_pytorch_grad_cam_on_real_photos():
    # Grad-CAM of the last feature map with a global-average-pool + linear head is the classic CAM (its channel
    # weights are the classifier row divided by h*w): the gradient-free map from the served model must match.
    from pytorch_grad_cam import GradCAM

    from sightline.models.factory import default_preprocessing

    model = create_model("tf_efficientnet_lite0", 1000, weights="auto").eval()
    pre = default_preprocessing("tf_efficientnet_lite0")
    engine = Engine(TorchBackend(model, device="cpu"), preprocessing=pre, classes=[str(i) for i in range(1000)])
    crops = _photos(pre.input_size)
    out = engine.run_crops(crops)
    ours = scale_cams(out.cams, pre.input_size)
    x = torch.from_numpy(engine.to_batch(crops))
    # Grad-CAM needs the gradient at bn2's output only: with the layers below it frozen, its backward pass stops
    # there instead of running through the whole network for their weights' gradients (~2/3 of this test's CPU)
    model.requires_grad_(False)
    model.bn2.requires_grad_(True)
    with GradCAM(model=model, target_layers=[model.bn2]) as cam:  # bn2 (+ act) produces forward_features
        theirs = cam(input_tensor=x, targets=None)  # None: each image's arg-max class, as ours
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
    # and the maps differ between images: a constant map would correlate with nothing
    assert np.corrcoef(ours[0].ravel(), ours[1].ravel())[0, 1] < 0.9


@pytest.fixture()
def tiny_bundle(tmp_path):
    torch.manual_seed(0)
    model = create_model("test_efficientnet", len(CLASSES), weights="none")
    folder = Bundle("test_efficientnet", CLASSES, Preprocessing(32)).save(tmp_path / "bundle", model.state_dict())
    return Bundle.from_dict(Bundle("test_efficientnet", CLASSES, Preprocessing(32)).to_dict(), path=folder)


def test_an_onnx_file_from_before_features_still_serves_and_says_how_to_get_them(tmp_path):
    import onnx
    from serve_tiny import make_bundle

    from sightline.bundle import load_bundle

    # the old export had one output, the logits (input "input", dynamic batch): today's graph of a tiny bundle
    # (exported once per test run and copied, serve_tiny.cached) cut down to the nodes the logits need, instead
    # of a second export of its own, ~3.5 s of CPU
    bundle = load_bundle(make_bundle(tmp_path))
    onnx.utils.extract_model(str(bundle.onnx_path), str(bundle.onnx_path), ["input"], ["logits"])
    assert [o.name for o in onnx.load(str(bundle.onnx_path)).graph.output] == ["logits"]
    png = _png(np.full((40, 50, 3), 90, np.uint8))
    with open_engine(bundle, backend="onnx") as engine:
        rows = engine.predict_files([png], names=["x.png"], keep_outputs=True)
        assert rows[0].label in bundle.classes and rows[0].output.features is None
        with pytest.raises(BundleError, match="sightline export"):
            engine.require_features()
    with open_engine(bundle, backend="torch") as eager:
        assert eager.predict_files([png], names=["x.png"])[0].label == rows[0].label


def test_a_damaged_onnx_file_is_one_line(tiny_bundle):
    tiny_bundle.onnx_path.write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="export"):
        OnnxBackend(tiny_bundle.onnx_path, input_size=32)


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_engine_closes_its_decode_threads(tiny_bundle):
    blobs = [_png(np.full((40, 50, 3), v, np.uint8)) for v in (10, 120, 250)]
    with open_engine(tiny_bundle, backend="torch") as engine:
        engine.workers = 2
        rows = engine.predict_files(blobs + [b"nope"], batch_size=4)
        pool = engine._pool
        assert pool is not None  # the batch decoded on the pool
    assert engine._pool is None and pool._shutdown
    assert [r.error is None for r in rows] == [True, True, True, False]
    assert "NotAnImageError" in rows[3].error


def test_output_take_and_concat_keep_rows_aligned():
    out = Output(np.arange(6.0).reshape(3, 2), np.arange(9.0).reshape(3, 3), np.arange(12.0).reshape(3, 2, 2))
    parts = [out.take(slice(i, i + 1)) for i in range(3)]
    back = Output.concat(parts[::-1])
    np.testing.assert_array_equal(back.logits, out.logits[::-1])
    np.testing.assert_array_equal(back.cams, out.cams[::-1])
    assert Output.concat([], num_classes=4).logits.shape == (0, 4)
    assert Output.concat([out, Output(out.logits)]).features is None  # a part without features: none at all


def test_time_calls_counts_what_it_is_told():
    calls = []
    t = time_calls(lambda: calls.append(1), items=8, warmup=2, min_repeats=5, max_repeats=5)
    assert len(calls) == 7 and t.repeats == 5 and t.items == 8
    assert t.p95_ms >= t.p50_ms >= 0 and t.ms_per_item == pytest.approx(t.mean_ms / 8)
    with pytest.raises(ValueError):
        time_calls(lambda: None, min_repeats=3, max_repeats=2)
