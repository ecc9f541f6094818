"""Stand-in outliers: images that are surely not from a bundle's classes, made without any new data, so every bundle
can choose its open-set ("unknown") score (issue 11, section 2).

Three families, each a pure function to (N, S, S, 3) uint8 crops at the network's input size S:

  synthetic   textures and noise drawn with numpy (`SYNTHETIC`): Gaussian and uniform noise, cloudy low-frequency
              noise, smooth colour gradients, stripes, checkerboards, random colour blobs, flat colour fields
  corruption  validation crops under every corruption of `sightline.evaluate.robustness` at its highest severity
              (5): what a broken camera, a lens cap or a bad encoder sends
  photo       other-domain photographs that ship inside scikit-image (`PHOTOS`: an astronaut, a cup of coffee, a
              cat, a rocket, coins, the moon, text, ...): each photo's centre crop and its four quadrants

The photographs are decoded through the inference core (`Engine.decode` then `Engine.crop`), as a user's file
would be. scikit-image is optional at run time: without it the photo family is empty and `photo_crops` says so in
its note. A bundle whose classes are among the photos' subjects (a cat classifier and `chelsea`) gets a stand-in
that is not an outlier; `sightline evaluate --ood DIR` with the user's own outliers is the check that counts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sightline.inference import Engine

__all__ = ["SYNTHETIC", "PHOTOS", "CORRUPTION_SEVERITY", "StandIns", "synthetic_crops", "corrupted_crops",
           "photo_files", "photo_crops", "stand_in_outliers"]

CORRUPTION_SEVERITY = 5  # the robustness suite's highest
# Files of skimage/data/ that ship in the scikit-image wheel (no download): photographs and scans unlike most
# labelled datasets. Their skimage.data names: astronaut, camera, chelsea (a cat), coffee, coins, rocket, ...
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
          "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
          "logo.png", "microaneurysms.png", "moon.png", "motorcycle_left.png", "page.png", "phantom.png",
          "retina.jpg", "rocket.jpg", "text.png")


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) float colours in [0, 255]."""
    return rng.uniform(0, 255, (n, 3))


def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / max(s - 1, 1)
    return y, x


def _gaussian_noise(rng: np.random.Generator, s: int) -> np.ndarray:
    sigma = rng.uniform(20, 90)
    base = _colours(rng, 1)[0]
    shape = (s, s, 3) if rng.random() < 0.7 else (s, s, 1)  # colour or grey noise
    return np.broadcast_to(base + rng.normal(0, sigma, shape), (s, s, 3))


def _uniform_noise(rng: np.random.Generator, s: int) -> np.ndarray:
    return rng.uniform(0, 255, (s, s, 3))


def _clouds(rng: np.random.Generator, s: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bicubically (plasma-like clouds)."""
    from PIL import Image

    cells = int(rng.integers(3, 9))
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((s, s), Image.Resampling.BICUBIC), dtype=np.float32)


def _gradient(rng: np.random.Generator, s: int) -> np.ndarray:
    y, x = _grid(s)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = _colours(rng, 2)
    return a + t[..., None] * (b - a)


def _stripes(rng: np.random.Generator, s: int) -> np.ndarray:
    y, x = _grid(s)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.03, 0.25)  # in units of the side
    phase = (np.cos(angle) * x + np.sin(angle) * y) / period
    wave = np.sin(2 * np.pi * phase)
    t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2  # hard or soft stripes
    a, b = _colours(rng, 2)
    return a + t[..., None] * (b - a)


def _checkerboard(rng: np.random.Generator, s: int) -> np.ndarray:
    cell = int(rng.integers(max(2, s // 32), max(3, s // 3)))
    yy, xx = np.mgrid[0:s, 0:s]
    t = ((yy // cell + xx // cell) % 2).astype(np.float32)
    a, b = _colours(rng, 2)
    return a + t[..., None] * (b - a)


def _blobs(rng: np.random.Generator, s: int) -> np.ndarray:
    """Random Gaussian colour blobs on a random background."""
    y, x = _grid(s)
    out = np.broadcast_to(_colours(rng, 1)[0], (s, s, 3)).astype(np.float32)
    for _ in range(int(rng.integers(3, 12))):
        cy, cx = rng.uniform(0, 1, 2)
        r = rng.uniform(0.04, 0.3)
        w = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
        out = out * (1 - w) + _colours(rng, 1)[0] * w
    return out


def _flat(rng: np.random.Generator, s: int) -> np.ndarray:
    return np.broadcast_to(_colours(rng, 1)[0] + rng.normal(0, 2, (s, s, 1)), (s, s, 3))


SYNTHETIC: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "uniform_noise": _uniform_noise,
    "clouds": _clouds,
    "gradient": _gradient,
    "stripes": _stripes,
    "checkerboard": _checkerboard,
    "blobs": _blobs,
    "flat": _flat,
}


@dataclass
class StandIns:
    """Stand-in outlier crops and where each came from (row i of `crops` is `kinds[i]` of `families[i]`)."""

    crops: np.ndarray  # (N, S, S, 3) uint8
    families: list[str] = field(default_factory=list)  # "synthetic" | "corruption" | "photo"
    kinds: list[str] = field(default_factory=list)  # e.g. "stripes", "blur", "coffee"
    notes: list[str] = field(default_factory=list)  # why a family is smaller or missing

    def __len__(self) -> int:
        return len(self.crops)

    @staticmethod
    def concat(parts: list[StandIns], size: int) -> StandIns:
        crops = [p.crops for p in parts if len(p)]
        return StandIns(np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
                        [f for p in parts for f in p.families], [k for p in parts for k in p.kinds],
                        [n for p in parts for n in p.notes])


def synthetic_crops(size: int, *, per_kind: int = 12, seed: int = 0) -> StandIns:
    """`per_kind` images of every SYNTHETIC kind at `size` x `size`, seeded (the same seed, the same images)."""
    rng = np.random.default_rng(seed)
    crops, kinds = [], []
    for name, draw in SYNTHETIC.items():
        for _ in range(per_kind):
            crops.append(np.clip(draw(rng, size), 0, 255).astype(np.uint8))
            kinds.append(name)
    return StandIns(np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
                    ["synthetic"] * len(kinds), kinds)


def corrupted_crops(crops: np.ndarray, *, seed: int = 0, severity: int = CORRUPTION_SEVERITY) -> StandIns:
    """Every corruption of the robustness suite at `severity` applied to (N, S, S, 3) uint8 validation crops."""
    from sightline.evaluate.robustness import CORRUPTIONS, corrupt

    s = crops.shape[1] if crops.ndim == 4 else 0
    if len(crops) == 0:
        return StandIns(np.zeros((0, s, s, 3), np.uint8), notes=["no validation crops to corrupt"])
    parts = [corrupt(crops, name, severity, seed=seed + i) for i, name in enumerate(CORRUPTIONS)]
    kinds = [name for name in CORRUPTIONS for _ in range(len(crops))]
    return StandIns(np.concatenate(parts), ["corruption"] * len(kinds), kinds)


def photo_files() -> tuple[list[Path], str | None]:
    """The PHOTOS files of the installed scikit-image, and a note when there are none (not installed)."""
    try:
        import skimage.data
    except ImportError:
        return [], "scikit-image is not installed: no other-domain photos among the stand-in outliers"
    folder = Path(skimage.data.__file__).parent
    found = [folder / name for name in PHOTOS if (folder / name).is_file()]
    return found, None if found else f"none of scikit-image's sample photos were found in {folder}"


def photo_crops(engine: Engine, *, quadrants: bool = True) -> StandIns:
    """Other-domain photos through the inference core: each file's centre crop (as the model sees any upload)
    and, with `quadrants`, the centre crops of its four quarters (more views of the same photo at a closer
    zoom, as a user's photos of varied framing would be).

    The crops are read-only and made once a process for the same files (path, mtime, size) at the same
    preprocessing and pixel cap: train and then evaluate or retrain in one process decoded all 23 photos again
    each time, about 0.15 s of CPU a call."""
    files, note = photo_files()
    key = (tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files), engine.preprocessing,
           engine.max_pixels, quadrants)
    if key not in _PHOTO_CROPS:
        crops, kinds = [], []
        for path in files:
            image = engine.decode(path)
            crops.append(engine.crop(image))
            kinds.append(path.stem)
            if quadrants:
                w, h = image.size
                for left, top in ((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)):
                    crops.append(engine.crop(image.crop((left, top, left + w // 2, top + h // 2))))
                    kinds.append(path.stem)
        s = engine.preprocessing.input_size
        made = np.stack(crops) if crops else np.zeros((0, s, s, 3), np.uint8)
        made.flags.writeable = False
        while len(_PHOTO_CROPS) >= 2:  # two input sizes at most (a teacher and its student): ~17 MB each at 224 px
            del _PHOTO_CROPS[next(iter(_PHOTO_CROPS))]
        _PHOTO_CROPS[key] = (made, tuple(kinds))
    made, kinds = _PHOTO_CROPS[key]
    return StandIns(made, ["photo"] * len(kinds), list(kinds), [note] if note else [])


_PHOTO_CROPS: dict[tuple, tuple[np.ndarray, tuple[str, ...]]] = {}  # photo_crops' made crops, oldest first


def stand_in_outliers(engine: Engine, val_crops: np.ndarray, *, seed: int = 0, per_kind: int = 12,
                      photos: bool = True) -> StandIns:
    """All three families for `engine`'s input size: synthetic textures and noise (`per_kind` of each kind),
    every severity-5 corruption of `val_crops` (N, S, S, 3) uint8, and the scikit-image photos (`photos`)."""
    s = engine.preprocessing.input_size
    parts = [synthetic_crops(s, per_kind=per_kind, seed=seed), corrupted_crops(val_crops, seed=seed)]
    if photos:
        parts.append(photo_crops(engine))
    return StandIns.concat(parts, s)
