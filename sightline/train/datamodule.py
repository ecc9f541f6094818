"""Which splits, which transforms: a LightningDataModule over a Sightline dataset folder.

Training images get augmentations (torchvision.transforms.v2) followed by the same normalisation as the eval
path; validation and test images go through `sightline.data.transforms.eval_preprocess` exactly, so the numbers
seen during training are the numbers evaluation and the server will see.

Each image is decoded once: the train and val splits keep their decoded, resized uint8 pixels in an
`ImageCache` (bounded by a RAM budget, then disk), and every epoch augments from there.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from sightline.preprocessing import Preprocessing
from sightline.data.balance import choose_balance  # re-exported: it lived here before it became torch-free
from sightline.data.transforms import RESAMPLE, eval_preprocess, normalize, resize_center_crop

if TYPE_CHECKING:
    from PIL import Image

    from sightline.data.datasets import Sample
    from sightline.train.cache import CacheStats, ImageCache

__all__ = ["ImageFolderSplit", "train_transform", "eval_transform", "train_side", "SightlineDataModule",
           "choose_balance"]


def train_transform(pre: Preprocessing, *, recipe: str = "light", vflip: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> augmented (3, S, S) float32 tensor, normalised with `pre.mean` / `pre.std`.

    light: random resized crop (35-100 % of the area), horizontal flip, rotation +-15 deg, brightness / contrast /
    saturation jitter 0.2. strong: light + TrivialAugmentWide + random erasing. none: the eval path."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    if recipe == "none":
        return eval_transform(pre)
    interp = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
              "bicubic": InterpolationMode.BICUBIC, "lanczos": InterpolationMode.LANCZOS}[pre.interpolation]
    steps: list[Any] = [
        v2.RandomResizedCrop(pre.input_size, scale=(0.35, 1.0), interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    steps += [v2.RandomRotation(15, interpolation=InterpolationMode.BILINEAR),
              v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)]
    if recipe == "strong":
        steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    if recipe == "strong":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> (3, S, S) float32 tensor, exactly `eval_preprocess`."""
    assert pre.interpolation in RESAMPLE
    return lambda image: torch.from_numpy(eval_preprocess(image, pre))


TRAIN_SIDE_SCALE = 1.25  # training images are cached with their shorter side at 1.25 x the input size: the
#   median random-resized crop keeps about 0.82 of the side (sqrt of the median area share 0.675), so most crops are
#   downscaled to the input, not blown up from fewer pixels.


def train_side(pre: Preprocessing) -> int:
    """Shorter side (px) at which training images are decoded and cached, before augmentation."""
    return max(pre.resize_size, int(round(pre.input_size * TRAIN_SIDE_SCALE)))


class ShorterSide:
    """Image i of `paths` -> (H, W, 3) uint8, its shorter side resized down to `side` (never up). JPEGs are
    decoded at a reduced scale that stays at or above `side` (Pillow's draft), which is what makes it cheap."""

    def __init__(self, paths: Sequence[Path], side: int, interpolation: str) -> None:
        self.paths, self.side, self.resample = list(paths), int(side), RESAMPLE[interpolation]

    def __call__(self, i: int) -> np.ndarray:
        from sightline.data.images import load_image

        image = load_image(self.paths[i], draft=(self.side, self.side))
        w, h = image.size
        if min(w, h) > self.side:
            scale = self.side / min(w, h)
            size = (self.side, max(self.side, round(h * scale))) if w <= h else (max(self.side, round(w * scale)), self.side)
            image = image.resize(size, self.resample)
        return np.asarray(image)


class CenterCrop:
    """Image i of `paths` -> the (S, S, 3) uint8 center crop of the eval path (`resize_center_crop`): with
    `normalize` this is exactly `eval_preprocess`, the input evaluation and the server compute."""

    def __init__(self, paths: Sequence[Path], pre: Preprocessing) -> None:
        self.paths, self.pre = list(paths), pre

    def __call__(self, i: int) -> np.ndarray:
        from sightline.data.images import load_image

        return np.asarray(resize_center_crop(load_image(self.paths[i]), self.pre))


class _Augment:
    """(H, W, 3) uint8 -> augmented network input, through a PIL-image transform (`train_transform`)."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.fromarray(pixels))


class _Normalize:
    """(S, S, 3) uint8 center crop -> (3, S, S) float32 network input (`normalize`)."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(normalize(pixels, self.pre))


class ImageFolderSplit(Dataset):
    """(image tensor, class index) pairs for a list of samples. Decoding errors name the file (SightlineError).

    Each image is decoded and resized once by `decode` (train: `ShorterSide`; eval: `CenterCrop`) and then
    turned into a tensor by `transform` every time it is read (train: random augmentation; eval: normalisation).
    With `use_cache`, the decoded pixels come from an `ImageCache`, the same arrays bit for bit."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], pre: Preprocessing, *, train: bool,
                 augment: str = "light", vflip: bool = False) -> None:
        index = {name: i for i, name in enumerate(classes)}
        self.paths = [s.path for s in samples]
        self.targets = [index[s.label] for s in samples]
        self.train = train
        self.cache: ImageCache | None = None
        self.set_preprocessing(pre, augment=augment, vflip=vflip)

    def set_preprocessing(self, pre: Preprocessing, *, augment: str = "light", vflip: bool = False) -> None:
        """Decode and transform for `pre` (drops a cache made for other settings)."""
        self.pre = pre
        if self.train and augment != "none":
            self.decode: Callable[[int], np.ndarray] = ShorterSide(self.paths, train_side(pre), pre.interpolation)
            self.transform: Callable[[np.ndarray], torch.Tensor] = _Augment(train_transform(pre, recipe=augment,
                                                                                            vflip=vflip))
        else:  # eval, or training without augmentation: the eval path exactly
            self.decode, self.transform = CenterCrop(self.paths, pre), _Normalize(pre)
        self.close_cache()

    def use_cache(self, ram_bytes: int, *, disk_bytes: int | None = None) -> CacheStats:
        """Decode every image once now and keep the pixels (memory first, then disk; see `ImageCache`)."""
        from sightline.train.cache import ImageCache

        if self.cache is None:
            self.cache = ImageCache(self.decode, len(self.paths), ram_bytes=ram_bytes, disk_bytes=disk_bytes)
        return self.cache.fill()

    def close_cache(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.cache = None

    def pixels(self, i: int) -> np.ndarray:
        """Image i decoded and resized: (H, W, 3) uint8, from the cache when there is one."""
        return self.cache[i] if self.cache is not None else self.decode(i)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.pixels(i)), self.targets[i]


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 2) // 2))


class SightlineDataModule(L.LightningDataModule):
    """train / val (/ test) splits of a `sightline.data.datasets.Dataset` in the split layout."""

    def __init__(
        self,
        train: Sequence[Sample],
        val: Sequence[Sample],
        classes: Sequence[str],
        preprocessing: Preprocessing,
        *,
        test: Sequence[Sample] = (),
        batch_size: int = 32,
        num_workers: int | None = None,
        augment: str = "light",
        vflip: bool = False,
        balance: str = "none",
        seed: int = 0,
        cache_ram: int | None = None,
    ) -> None:
        """`cache_ram`: bytes of memory for decoded train + val images (train first; beyond it, disk, then
        decoding every epoch; 0 keeps none in memory); None decodes every image every epoch."""
        super().__init__()
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.balance = balance
        self.seed = seed
        self.cache_ram = cache_ram
        self.augment, self.vflip = augment, vflip
        self.train_set = ImageFolderSplit(train, classes, preprocessing, train=True, augment=augment, vflip=vflip)
        self.val_set = ImageFolderSplit(val, classes, preprocessing, train=False)
        self.test_set = ImageFolderSplit(test, classes, preprocessing, train=False) if test else None
        self.cache_stats: dict[str, CacheStats] = {}

    def augment_at(self, pre: Preprocessing) -> None:
        """Augment training images for `pre` instead (e.g. a larger size whose crops two models share)."""
        self.train_set.set_preprocessing(pre, augment=self.augment, vflip=self.vflip)
        self.cache_stats.pop("train", None)

    def fill_cache(self) -> dict[str, CacheStats]:
        """Decode the train and val images once (nothing without a `cache_ram`); where each one went, per split."""
        if self.cache_ram is None:
            return {}
        left = self.cache_ram
        for name, split in (("train", self.train_set), ("val", self.val_set)):
            stats = split.use_cache(left)
            self.cache_stats[name] = stats
            left = max(0, left - stats.ram_bytes)
        return self.cache_stats

    def setup(self, stage: str) -> None:
        self.fill_cache()

    def teardown(self, stage: str) -> None:
        """Keep the caches: validate() after fit() reads the same val images. `close()` frees them."""

    def close(self) -> None:
        """Free the cached pixels and remove their disk part."""
        for split in (self.train_set, self.val_set):
            split.close_cache()
        self.cache_stats.clear()

    def class_counts(self) -> np.ndarray:
        """(K,) number of training images per class."""
        counts = Counter(self.train_set.targets)
        return np.array([counts.get(i, 0) for i in range(len(self.classes))], dtype=np.int64)

    def class_weights(self) -> torch.Tensor | None:
        """(K,) loss weights inversely proportional to class frequency (mean 1) when balance == "weights"."""
        if self.balance != "weights":
            return None
        counts = self.class_counts().astype(np.float64)
        w = counts.sum() / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(w / w.mean(), dtype=torch.float32)

    def _loader(self, dataset: Dataset, *, shuffle: bool, sampler: Any = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.balance == "sampler":
            counts = self.class_counts()
            per_sample = 1.0 / counts[np.asarray(self.train_set.targets)]
            generator = torch.Generator().manual_seed(self.seed)
            sampler = WeightedRandomSampler(per_sample.tolist(), num_samples=len(self.train_set), replacement=True,
                                            generator=generator)
        return self._loader(self.train_set, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise RuntimeError("this dataset has no test split")
        return self._loader(self.test_set, shuffle=False)
