"""Decode once: the image cache gives the tensors decoding gives, holds to its RAM budget, spills to disk."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightline.data.datasets import scan_dataset
from sightline.data.images import load_image
from sightline.data.transforms import eval_preprocess
from sightline.errors import UserInputError
from sightline.preprocessing import Preprocessing
from sightline.train.cache import ImageCache, ram_budget
from sightline.train.datamodule import ImageFolderSplit, train_side

from test_train_fit import make_data


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list[str]]:
    """40 px PNGs plus larger JPEGs (landscape and portrait), so the cached resize really resizes."""
    root = make_data(tmp_path_factory.mktemp("data"), splits={"train": 3})
    rng = np.random.default_rng(1)
    for name, size in (("blue", (120, 90)), ("red", (70, 130))):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / name / f"{name}_big.jpg", quality=90)
    dataset = scan_dataset(root)
    return dataset.split("train"), dataset.classes


PRE = Preprocessing(input_size=32)


@pytest.mark.parametrize("train", [True, False])
def test_cached_split_gives_the_tensors_decoding_gives(samples: tuple[list, list[str]], train: bool) -> None:
    items, classes = samples
    decoded = ImageFolderSplit(items, classes, PRE, train=train)
    cached = ImageFolderSplit(items, classes, PRE, train=train)
    stats = cached.use_cache(10**9)
    assert stats.in_ram == len(items) and stats.on_disk == 0 and stats.decoded_each_time == 0
    for i in range(len(items)):
        torch.manual_seed(i)  # the same augmentation draws on both sides
        a, ya = decoded[i]
        torch.manual_seed(i)
        b, yb = cached[i]
        assert torch.equal(a, b) and ya == yb
        assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    if not train:  # the eval path is exactly what evaluation and the server compute
        for i, s in enumerate(items):
            assert np.array_equal(cached[i][0].numpy(), eval_preprocess(load_image(s.path), PRE))


def test_training_pixels_are_cached_at_the_training_side(samples: tuple[list, list[str]]) -> None:
    items, classes = samples
    split = ImageFolderSplit(items, classes, PRE, train=True)
    split.use_cache(10**9)
    side = train_side(PRE)
    for i, s in enumerate(items):
        h, w, _ = split.pixels(i).shape
        native = min(s.width, s.height)
        assert min(h, w) == min(side, native)  # shrunk to the side, never enlarged
        assert abs(w / h - s.width / s.height) < 0.05  # aspect kept


def test_budget_fills_memory_then_disk_then_decodes(samples: tuple[list, list[str]]) -> None:
    items, classes = samples
    split = ImageFolderSplit(items, classes, PRE, train=True)
    sizes = [split.decode(i).nbytes for i in range(len(items))]
    # Room in memory for the first two images, on disk for the next one: the rest are decoded every time.
    cache = ImageCache(split.decode, len(items), ram_bytes=sizes[0] + sizes[1], disk_bytes=sizes[2])
    stats = cache.fill()
    assert (stats.in_ram, stats.on_disk, stats.decoded_each_time) == (2, 1, len(items) - 3)
    assert stats.ram_bytes == sizes[0] + sizes[1] and stats.disk_bytes == sizes[2]
    for i in range(len(items)):
        assert np.array_equal(cache[i], split.decode(i))
    # What DataLoader workers receive (spawn start method): the same pixels, disk part reopened there.
    clone = pickle.loads(pickle.dumps(cache))
    for i in range(len(items)):
        assert np.array_equal(clone[i], split.decode(i))
    folder = Path(cache._file).parent
    cache.close()
    assert not folder.exists()


def test_zero_ram_budget_keeps_everything_on_disk(samples: tuple[list, list[str]]) -> None:
    items, classes = samples
    split = ImageFolderSplit(items, classes, PRE, train=False)
    stats = split.use_cache(0)
    assert (stats.in_ram, stats.on_disk) == (0, len(items))
    assert all(np.array_equal(split.pixels(i), split.decode(i)) for i in range(len(items)))
    split.close_cache()


def test_ram_budget_values() -> None:
    assert ram_budget("0") == 0
    assert ram_budget("2GB") == 2 * 10**9 and ram_budget("512MiB") == 512 * 2**20
    assert 0 < ram_budget("auto") == pytest.approx(ram_budget("25%"), rel=0.2)
    for bad, words in (("-1GB", "negative"), ("lots", "not a size"), ("150%", "between 0% and 100%")):
        with pytest.raises(UserInputError, match=words):
            ram_budget(bad)


def test_cli_ram_budget_of_zero_and_a_bad_one_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sightline._cli.common import run_command
    from sightline.cli import app

    data = make_data(tmp_path / "data")
    # fp32 contiguous as set and no monitor's reference profile (a config file: the CLI has no switch for either):
    # the test is about the cache's budget, not what train times or adds around the fit
    (tmp_path / "plain.yaml").write_text("reference: false\nprecision: 32-true\nchannels_last: false\n")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--model", "test_efficientnet", "--weights", "none",
            "--input-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
            "--config", str(tmp_path / "plain.yaml")]
    assert run_command(app, [*args, "--cache-ram", "-1GB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cache_ram='-1GB' must be auto, off, a size such as 2GB or 0" in err[0]
    assert run_command(app, [*args, "--cache-ram", "0"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cache_ram=0" in line]
    assert len(lines) == 1 and "temporary disk cache instead" in lines[0] and "--cache-ram 2GB" in lines[0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    filled = metrics["choices"]["cache"]["filled"]
    assert filled["train"]["in_ram"] == 0 and filled["train"]["on_disk"] == 24 and filled["val"]["on_disk"] == 12
