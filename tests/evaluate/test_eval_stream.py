"""Streaming prediction (evaluate.predict): the same logits as scoring every crop at once, each file decoded once
for several models, and never more than a chunk or two of crops in memory."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from PIL import Image

import sightline.data.images as images
import sightline.evaluate.predict as predict
from sightline.bundle import Bundle, Preprocessing
from sightline.evaluate.predict import fast_inference, load_crops, logits_for_crops, predict_logits, predict_logits_many
from sightline.models.factory import create_model

CLASSES = ["a", "b", "c"]
N_FILES = 23  # one of them unreadable, so chunks and forward batches do not line up


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    files = []
    for i in range(N_FILES):
        path = root / f"img{i:02d}.png"
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype(np.uint8)).save(path)
        files.append(path)
    good = files[7].read_bytes()
    files[7].write_bytes(good[: len(good) // 2])  # valid header, cut pixels: reported, not scored
    bundle = Bundle("test_efficientnet", CLASSES, preprocessing=Preprocessing(input_size=32))
    torch.manual_seed(0)
    model = fast_inference(create_model("test_efficientnet", len(CLASSES), weights="none"))
    return files, bundle, model


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 256])
def test_streamed_logits_equal_all_crops_at_once(setup, chunk_size):
    files, bundle, model = setup
    pre = bundle.preprocessing
    whole = load_crops(files, pre)
    expected = logits_for_crops(model, whole.crops, pre, batch_size=4, device="cpu")
    logits, inputs = predict_logits(bundle, files, model=model, batch_size=4, chunk_size=chunk_size, device="cpu",
                                    progress=False)
    assert logits.shape == (N_FILES - 1, len(CLASSES))
    np.testing.assert_array_equal(logits, expected)  # same forward batches, whatever the chunking: bit for bit
    assert inputs.paths == whole.paths and inputs.index == whole.index and inputs.failed == whole.failed
    assert [f["path"] for f in inputs.failed] == [str(files[7])]
    assert len(inputs.crops) == 0  # no pixels kept unless asked
    _, kept = predict_logits(bundle, files, model=model, batch_size=4, chunk_size=chunk_size, device="cpu",
                             progress=False, keep_crops=True)
    np.testing.assert_array_equal(kept.crops, whole.crops)


@pytest.mark.parametrize("keep_crops", [False, True])
def test_only_a_chunk_of_crops_is_held_while_decoding(setup, monkeypatch, keep_crops):
    """Every chunk's crops are watched with a weak reference: when the next chunk is decoded, at most the previous
    one may still be alive. keep_crops=True holds them all, and the same count sees it (the check can fail)."""
    files, bundle, model = setup
    real = predict.load_crops
    chunks: list[weakref.ref] = []
    most = {"asked": 0, "alive": 0}

    def alive() -> int:
        return sum(len(a) for a in (r() for r in chunks) if a is not None)

    def watched(paths, pre):
        most["asked"] = max(most["asked"], len(paths))
        most["alive"] = max(most["alive"], alive())
        out = real(paths, pre)
        chunks.append(weakref.ref(out.crops))
        return out

    monkeypatch.setattr(predict, "load_crops", watched)
    logits, inputs = predict_logits(bundle, files, model=model, batch_size=2, chunk_size=3, device="cpu",
                                    progress=False, keep_crops=keep_crops)
    assert len(logits) == N_FILES - 1 and len(chunks) == 8
    assert most["asked"] <= 3  # never more than a chunk decoded at once
    if keep_crops:
        assert most["alive"] >= N_FILES - 1 - 3 and len(inputs.crops) == N_FILES - 1
    else:
        assert most["alive"] <= 3  # while one chunk is decoded, at most the previous one is still referenced
        assert alive() == 0  # and none once the logits are returned


def test_several_models_score_one_decode(setup, monkeypatch):
    files, bundle, model = setup
    torch.manual_seed(1)
    other = fast_inference(create_model("test_efficientnet", len(CLASSES), weights="none"))
    alone = [predict_logits(bundle, files, model=m, batch_size=4, device="cpu", progress=False)[0]
             for m in (model, other)]
    decodes = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda *a, **k: decodes.append(1) or real(*a, **k))
    both, inputs = predict_logits_many([bundle, bundle], files, models=[model, other], batch_size=4, chunk_size=5,
                                       device="cpu", progress=False)
    assert len(decodes) == N_FILES  # each file once, for both models
    for got, want in zip(both, alone):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(both[0], both[1])
    with pytest.raises(ValueError, match="one preprocessing"):
        shifted = Bundle("test_efficientnet", CLASSES, preprocessing=Preprocessing(input_size=40))
        predict_logits_many([bundle, shifted], files, models=[model, other], progress=False)
