"""Streaming a folder through the inference core (`score_files`): the same rows as `run_crops` on every crop at
once, each file decoded once for several engines, unreadable files reported, and never more than a chunk or two
of crops in memory."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from PIL import Image

import sightline.data.crops as crops_module
import sightline.data.images as images
from sightline.bundle import Bundle
from sightline.inference import Engine, TorchBackend, load_crops, score_files
from sightline.models.factory import create_model
from sightline.preprocessing import Preprocessing
from sightline.progress import ProgressEvent

CLASSES = ["a", "b", "c"]
N_FILES = 23  # two of them unreadable, so chunks and forward batches do not line up
BAD = (7, 15)


def _engine(seed: int, pre: Preprocessing) -> Engine:
    torch.manual_seed(seed)
    model = create_model("test_efficientnet", len(CLASSES), weights="none")
    return Engine(TorchBackend(model, device="cpu"), bundle=Bundle("test_efficientnet", CLASSES, preprocessing=pre))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    files = []
    for i in range(N_FILES):
        path = root / f"img{i:02d}.png"
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype(np.uint8)).save(path)
        files.append(path)
    good = files[BAD[0]].read_bytes()
    files[BAD[0]].write_bytes(good[: len(good) // 2])  # valid header, cut pixels
    files[BAD[1]].write_text("not an image")  # a PNG by name only
    pre = Preprocessing(input_size=32)
    return files, pre, _engine(0, pre)


def _assert_same_output(got, want):
    np.testing.assert_array_equal(got.logits, want.logits)
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.cams, want.cams)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 256])
def test_streamed_rows_equal_run_crops_on_all_crops_at_once(setup, chunk_size):
    files, pre, engine = setup
    whole = load_crops(files, pre)
    expected = engine.run_crops(whole.crops, batch_size=4)
    (out,), inputs = score_files([engine], files, batch_size=4, chunk_size=chunk_size)
    assert out.logits.shape == (N_FILES - 2, len(CLASSES)) and out.cams is not None
    _assert_same_output(out, expected)  # same forward batches, whatever the chunking: bit for bit
    assert inputs.paths == whole.paths and inputs.index == whole.index and inputs.failed == whole.failed
    assert len(inputs.crops) == 0  # no pixels kept unless asked
    _, kept = score_files([engine], files, batch_size=4, chunk_size=chunk_size, keep_crops=True)
    np.testing.assert_array_equal(kept.crops, whole.crops)


def test_unreadable_files_are_reported_with_a_reason_and_left_out(setup):
    files, pre, engine = setup
    (out,), inputs = score_files([engine], files, batch_size=4, chunk_size=5)
    assert [f["path"] for f in inputs.failed] == [str(files[i]) for i in BAD]
    for f in inputs.failed:
        assert f["reason"] and "\n" not in f["reason"] and files[0].parent.name in f["reason"]  # names the file
    assert inputs.index == [i for i in range(N_FILES) if i not in BAD] and len(out) == len(inputs.index)
    assert [p.name for p in inputs.paths] == [files[i].name for i in inputs.index]


@pytest.mark.parametrize("keep_crops", [False, True])
def test_only_a_chunk_of_crops_is_held_while_decoding(setup, monkeypatch, keep_crops):
    """Every chunk's crops are watched with a weak reference: when the next chunk is decoded, at most the previous
    one may still be alive. keep_crops=True holds them all, and the same count sees it (the check can fail)."""
    files, pre, engine = setup
    real = crops_module.load_crops
    chunks: list[weakref.ref] = []
    most = {"asked": 0, "alive": 0}

    def alive() -> int:
        return sum(len(a) for a in (r() for r in chunks) if a is not None)

    def watched(paths, pre, **kwargs):
        most["asked"] = max(most["asked"], len(paths))
        most["alive"] = max(most["alive"], alive())
        out = real(paths, pre, **kwargs)
        chunks.append(weakref.ref(out.crops))
        return out

    monkeypatch.setattr(crops_module, "load_crops", watched)
    (out,), inputs = score_files([engine], files, batch_size=2, chunk_size=3, keep_crops=keep_crops)
    assert len(out) == N_FILES - 2 and len(chunks) == 8
    assert most["asked"] <= 3  # never more than a chunk decoded at once
    if keep_crops:
        assert most["alive"] >= N_FILES - 2 - 3 and len(inputs.crops) == N_FILES - 2
    else:
        assert most["alive"] <= 3  # while one chunk is decoded, at most the previous one is still referenced
        assert alive() == 0  # and none once the outputs are returned


def test_several_engines_score_one_decode(setup, monkeypatch):
    files, pre, engine = setup
    other = _engine(1, pre)
    alone = [score_files([e], files, batch_size=4)[0][0] for e in (engine, other)]
    decodes = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda *a, **k: decodes.append(1) or real(*a, **k))
    both, inputs = score_files([engine, other], files, batch_size=4, chunk_size=5)
    assert len(decodes) == N_FILES  # each file once, for both engines
    for got, want in zip(both, alone):
        _assert_same_output(got, want)
    assert not np.array_equal(both[0].logits, both[1].logits)
    with pytest.raises(ValueError, match="one preprocessing"):
        score_files([engine, _engine(1, Preprocessing(input_size=40))], files)


def test_progress_counts_every_file_once_and_finishes(setup):
    files, pre, engine = setup
    events: list[ProgressEvent] = []
    score_files([engine], files, batch_size=4, chunk_size=5, progress=events.append, task="scoring")
    assert {e.task for e in events} == {"scoring"} and all(e.total == N_FILES for e in events)
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == N_FILES  # bad files count as handled too
    assert events[-1].finished and not any(e.finished for e in events[:-1])
