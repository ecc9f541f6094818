"""Which splits, which transforms: a LightningDataModule over a Sightline dataset folder.

Training images get augmentations (torchvision.transforms.v2) followed by the same normalisation as the eval
path; validation and test images go through `sightline.data.transforms.eval_preprocess` exactly, so the numbers
seen during training are the numbers evaluation and the server will see.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from sightline.preprocessing import Preprocessing
from sightline.data.balance import choose_balance  # re-exported: it lived here before it became torch-free
from sightline.data.transforms import RESAMPLE, eval_preprocess

if TYPE_CHECKING:
    from PIL import Image

    from sightline.data.datasets import Sample

__all__ = ["ImageFolderSplit", "train_transform", "eval_transform", "SightlineDataModule", "choose_balance"]


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


class ImageFolderSplit(Dataset):
    """(image tensor, class index) pairs for a list of samples. Decoding errors name the file (SightlineError)."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform: Callable[[Any], torch.Tensor],
                 *, draft: tuple[int, int] | None = None) -> None:
        index = {name: i for i, name in enumerate(classes)}
        self.paths = [s.path for s in samples]
        self.targets = [index[s.label] for s in samples]
        self.transform = transform
        self.draft = draft  # JPEG decode at reduced size when at least this big (training only)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from sightline.data.images import load_image

        image = load_image(self.paths[i], draft=self.draft)
        return self.transform(image), self.targets[i]


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
    ) -> None:
        super().__init__()
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.balance = balance
        self.seed = seed
        draft = (preprocessing.resize_size, preprocessing.resize_size)
        self.train_set = ImageFolderSplit(train, classes, train_transform(preprocessing, recipe=augment, vflip=vflip),
                                          draft=draft)
        self.val_set = ImageFolderSplit(val, classes, eval_transform(preprocessing))
        self.test_set = ImageFolderSplit(test, classes, eval_transform(preprocessing)) if test else None

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
