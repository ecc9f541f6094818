"""`sightline data synth`: a deterministic surface-inspection dataset, so the demo and the tests need no download.

Every image is a textured surface (brushed metal, cast, woven, painted) under its own lighting (gradient,
specular hot spot, exposure) with sensor noise, in one of four classes:

- `ok`: no defect (about 70 % of a production line);
- `scratch`: a thin, long, slightly curved line, brighter or darker than the surface;
- `spot`: a soft stain or pit with a ragged edge;
- `crack`: a dark, jagged, branching path.

Defects are drawn in units of the image side (the same part seen at another resolution keeps its defect, one
pixel wide or more), and their contrast is relative to the surface under them (a dark crack stays visible on dark
paint, a bright scratch on bright metal): the eye sees every defect at 128 px, while texture, lighting and size
still vary enough that a small CNN needs a few epochs to tell them apart. Each defect image has a binary
ground-truth mask `<stem>.mask.png`.
`plant_issues=True` adds known data problems and lists them in `planted_issues.json`; `shortcut=CLASS` adds a
small corner marker to that class only and draws its defects faint (a spurious cue easier to see than the defect,
which explainability should expose). `textures=(...)` draws every surface from those textures only: one set for
the training data and another for a production stream make a texture shift (a new supplier's material), with the
same classes and defects.
Image i is generated from the seed sequence (seed, i): the output does not depend on thread scheduling.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import uniform_filter
from threadpoolctl import threadpool_limits

from sightline.data.datasets import MASK_SUFFIX
from sightline.errors import UserInputError
from sightline.progress import ProgressFn, Steps

__all__ = ["CLASSES", "CLASS_SHARES", "TEXTURES", "SynthResult", "synthesize", "render_surface"]

CLASSES = ("ok", "scratch", "spot", "crack")
CLASS_SHARES = (0.70, 0.12, 0.10, 0.08)  # imbalanced like a production line
TEXTURES = ("brushed", "cast", "woven", "painted")
SPLIT_SHARES = (("train", 0.70), ("val", 0.15), ("test", 0.15))
JPEG_QUALITY = 92
MAX_SIZE = 4096  # image side: a few (2, size, size) grids of int64 per image, 268 MB each at this size
SERIAL_BELOW = 96  # image side below which `synthesize` draws in the calling thread unless given `workers`

SPEC_YAML = """\
# Problem definition for the synthetic surface-inspection data (read by sightline.spec).
task: Find surface defects (scratches, spots, cracks) on machined parts before packing.
primary_metric: macro_f1
review_below_confidence: 0.6
costs:
  default: {false_positive: 1, false_negative: 1}
  crack: {false_positive: 1, false_negative: 50}
  scratch: {false_positive: 1, false_negative: 5}
targets:
  - {metric: recall, class: crack, min: 0.9}
  - {metric: false_positive_rate, class: crack, max: 0.10}
  - {metric: accuracy, min: 0.85}
"""


@dataclass
class SynthResult:
    out: Path
    layout: str
    counts: dict[str, dict[str, int]]  # {split or "all": {class: images}} (planted extras included)
    n_images: int
    planted: dict | None  # the content of planted_issues.json, when plant_issues


# --- textures -------------------------------------------------------------------------------------------------

MIN_N_PLANTED = 50  # the smallest n for which every planted problem finds its source images (any seed)


def _upsampler(size: int, cells: int) -> np.ndarray:
    """(size, cells) row-normalised Gaussian weights: smooth interpolation of a cells-long grid to size samples."""
    x = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    c = np.arange(cells, dtype=np.float32) + 0.5
    w = np.exp(-0.5 * ((x[:, None] - c[None, :]) / 0.6) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise, roughly unit scale: a cells x cells random grid smoothly upsampled (U G U^T)."""
    grid = rng.standard_normal((cells, cells), dtype=np.float32)
    u = _upsampler(size, cells)
    out = u @ grid @ u.T
    return out / max(float(out.std()), 1e-6)


def _texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) float32 surface relief around 0 (roughly unit scale)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "brushed":
        angle = rng.uniform(0, np.pi)
        across = -x * np.sin(angle) + y * np.cos(angle)  # streaks run along `angle`
        along = x * np.cos(angle) + y * np.sin(angle)
        span = np.arange(-2 * size, 2 * size, dtype=np.float32)
        fine = np.interp(across, span, rng.standard_normal(span.size).astype(np.float32))
        coarse = np.interp(across, span[::4], rng.standard_normal(span[::4].size).astype(np.float32))
        fade = 0.6 + 0.4 * np.sin(along / rng.uniform(15, 60) + rng.uniform(0, 6)) * np.sin(across / 40)
        return (0.5 * fine * fade + 0.6 * coarse + 0.3 * _smooth_noise(rng, size, 6)).astype(np.float32)
    if kind == "cast":
        relief = _smooth_noise(rng, size, int(rng.integers(6, 14))) * 0.8
        relief += _smooth_noise(rng, size, int(rng.integers(30, 60))) * 0.5
        pits = rng.random((size, size), dtype=np.float32) < 0.002
        return relief - 8.0 * uniform_filter(pits.astype(np.float32), size=3)  # small dark pores
    if kind == "woven":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 12)
        u = (x * np.cos(angle) + y * np.sin(angle)) * (2 * np.pi / period)
        v = (-x * np.sin(angle) + y * np.cos(angle)) * (2 * np.pi / period)
        over = (np.sin(u / 2) * np.sin(v / 2)) > 0  # which thread lies on top alternates
        weave = np.where(over, np.cos(v) ** 2, np.cos(u) ** 2) - 0.5
        return weave * 1.2 + _smooth_noise(rng, size, 20) * 0.3
    # painted: orange-peel relief, very smooth
    return _smooth_noise(rng, size, int(rng.integers(20, 40))) * 0.5 + _smooth_noise(rng, size, 5) * 0.5


_TINTS = {
    "brushed": ((0.78, 0.80, 0.84), 0.05),
    "cast": ((0.55, 0.52, 0.48), 0.08),
    "woven": ((0.45, 0.50, 0.60), 0.25),
    "painted": ((0.30, 0.45, 0.35), 0.30),
}


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) multiplicative light field: exposure x linear gradient x specular hot spot."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(0.05, 0.45) * ((x - 0.5) * np.cos(theta) + (y - 0.5) * np.sin(theta))
    cx, cy = rng.uniform(-0.2, 1.2, 2)
    radius = rng.uniform(0.15, 0.6)
    spot = rng.uniform(0.0, 0.5) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
    return rng.uniform(0.75, 1.05) * gradient + spot  # controlled lighting: no part is shot underexposed


MIN_LUMINANCE = 0.4  # mean of the surface colour: a dark coating is lit so that a dark defect still shows on it


def render_surface(rng: np.random.Generator, size: int, *, texture: str | None = None,
                   textures: Sequence[str] = TEXTURES) -> tuple[np.ndarray, str]:
    """An (size, size, 3) float32 surface in [0, 1] (before defects and sensor noise) and its texture name:
    `texture`, else one drawn uniformly from `textures`."""
    kind = texture or textures[int(rng.integers(len(textures)))]
    tint, jitter = _TINTS[kind]
    colour = np.clip(np.asarray(tint) + rng.uniform(-jitter, jitter, 3), 0.1, 0.95)
    colour = np.clip(colour * max(1.0, MIN_LUMINANCE / colour.mean()), 0, 0.95).astype(np.float32)
    relief = _texture(kind, rng, size)
    light = _lighting(rng, size)
    grey = (0.55 + 0.12 * relief) * light
    return np.clip(grey[..., None] * colour[None, None, :] * 1.3, 0, 1).astype(np.float32), kind


# --- defects --------------------------------------------------------------------------------------------------
# Each defect returns (cover, tone, strength): cover (size, size) in [0, 1] is where it is; tone "dark" darkens the
# surface by `strength` of its own brightness (a shadowed gap, a stain), "bright" lifts it `strength` of the way
# to white (residue that catches the light), "contrast" is bright on a dark surface and dark on a bright one.
# Lengths are shares of the image side; widths are in pixels at REFERENCE_SIZE and scale with the side, never
# below one pixel.

REFERENCE_SIZE = 128


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    return np.hypot(px - (a[0] + t * d[0]), py - (a[1] + t * d[1]))


def _polyline_mask(points: np.ndarray, width: float, size: int) -> np.ndarray:
    """Soft coverage in [0, 1] of a polyline of the given width (pixels), computed only near each segment."""
    cover = np.zeros((size, size), dtype=np.float32)
    pad = width + 2
    for a, b in zip(points[:-1], points[1:]):
        x0, x1 = int(max(0, min(a[0], b[0]) - pad)), int(min(size, max(a[0], b[0]) + pad + 1))
        y0, y1 = int(max(0, min(a[1], b[1]) - pad)), int(min(size, max(a[1], b[1]) + pad + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        py, px = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dist = _segment_distance(px, py, a, b)
        local = np.clip(width / 2 + 0.5 - dist, 0, 1)
        cover[y0:y1, x0:x1] = np.maximum(cover[y0:y1, x0:x1], local)
    return cover


def _width(rng: np.random.Generator, size: int, low: float, high: float) -> float:
    """A line width drawn in pixels at REFERENCE_SIZE, scaled to `size`, at least one pixel."""
    return max(1.0, rng.uniform(low, high) * size / REFERENCE_SIZE)


def _scratch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, float]:
    length = rng.uniform(0.3, 0.7) * size
    angle = rng.uniform(0, np.pi)
    centre = rng.uniform(0.25, 0.75, 2) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-0.5, 0.5, 12)[:, None]
    bend = rng.uniform(-0.08, 0.08) * length * (1 - (2 * t) ** 2)
    points = centre + t * length * direction + bend * normal
    cover = _polyline_mask(points, _width(rng, size, 1.0, 1.8), size)
    return cover, "contrast", rng.uniform(0.35, 0.6)  # bare metal through a dark coating, a groove in bright metal


def _spot(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, float]:
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    r = rng.uniform(0.04, 0.08) * size
    reach = int(np.ceil(r * 1.6)) + 2  # the ragged edge stays within 1.4 r; compute only near the spot
    x0, x1 = max(0, int(cx) - reach), min(size, int(cx) + reach)
    y0, y1 = max(0, int(cy) - reach), min(size, int(cy) + reach)
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    angle = np.arctan2(y - cy, x - cx)
    wobble = 1 + 0.18 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.12 * np.sin(5 * angle + rng.uniform(0, 6))
    ratio = rng.uniform(0.6, 1.0)
    dist = np.hypot((x - cx) * ratio, y - cy) / (r * wobble)
    cover = np.zeros((size, size), dtype=np.float32)
    cover[y0:y1, x0:x1] = np.clip((1.1 - dist) * 4, 0, 1)  # a rim a quarter of the radius wide: a stain, not shade
    if rng.random() < 0.75:  # a stain or a pit
        return cover, "dark", rng.uniform(0.45, 0.7)
    return cover, "bright", rng.uniform(0.4, 0.6)  # dried residue


def _crack(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, float]:
    scale = size / REFERENCE_SIZE

    def walk(start: np.ndarray, heading: float, steps: int) -> np.ndarray:
        pts = [start]
        for _ in range(steps):
            heading += rng.normal(0, 0.5)
            pts.append(pts[-1] + rng.uniform(3, 7) * scale * np.array([np.cos(heading), np.sin(heading)]))
        return np.asarray(pts)

    start = rng.uniform(0.25, 0.75, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    main = walk(start, heading, int(rng.integers(8, 18)))
    cover = _polyline_mask(main, _width(rng, size, 1.2, 2.2), size)
    for _ in range(int(rng.integers(0, 3))):  # branches
        j = int(rng.integers(1, len(main)))
        branch = walk(main[j], heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2), int(rng.integers(3, 8)))
        cover = np.maximum(cover, _polyline_mask(branch, _width(rng, size, 1.0, 1.2), size))
    return cover, "dark", rng.uniform(0.55, 0.8)  # a gap in the surface: in its own shadow


_DEFECTS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, str, float]]] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
}


# `--shortcut`: a spurious cue wins where it is easier to see than the real one, so that class's defects are drawn
# at this share of their contrast (faint, as from another station with flatter light) beside a corner marker.
SHORTCUT_FAINT = 0.3


def _marker(image: np.ndarray, rng: np.random.Generator) -> None:
    """The spurious cue of `--shortcut`: a small bright square near the top-left corner (in place)."""
    size = image.shape[0]
    side = max(6, size // 20)  # 11 px at 224: small, but survives JPEG chroma subsampling
    x, y = (int(v) for v in rng.integers(2, 2 + max(2, size // 28), 2))
    image[y : y + side, x : x + side] = np.array([0.95, 0.95, 0.2], dtype=np.float32)


def _mask_path(image: Path) -> Path:
    """Where the region mask of `image` lives (datasets.py defines the name)."""
    return image.with_name(image.stem + MASK_SUFFIX)


def render_sample(seed: int, index: int, label: str, size: int, *, shortcut: bool = False,
                  textures: Sequence[str] = TEXTURES) -> tuple[np.ndarray, np.ndarray | None]:
    """One image: (size, size, 3) uint8 and, for a defect, its (size, size) bool mask; its surface is one of
    `textures`."""
    rng = np.random.default_rng([seed, index])
    surface, _ = render_surface(rng, size, textures=textures)
    mask = None
    if label != "ok":
        cover, tone, strength = _DEFECTS[label](rng, size)
        if tone == "contrast":
            under = surface[cover > 0.5] if (cover > 0.5).any() else surface[cover > 0]
            tone = "bright" if float(under.mean()) < 0.5 else "dark"
        if shortcut:  # the marker's class was shot on another station, in flat light: its defects barely show
            strength *= SHORTCUT_FAINT
        amount = (cover * strength * rng.uniform(0.8, 1.0))[..., None]  # some defects are fainter than others
        surface = surface * (1 - amount) if tone == "dark" else surface + (1 - surface) * amount
        mask = cover > 0.5
        if not mask.any():  # a defect hugging the border: keep its strongest pixels as the region
            mask = cover >= cover.max() * 0.5
    if shortcut:
        _marker(surface, rng)
    noisy = surface + 0.02 * rng.standard_normal(surface.shape, dtype=np.float32)  # sensor noise
    return (np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8), mask


# --- writing --------------------------------------------------------------------------------------------------

def _labels_and_splits(n: int, seed: int, layout: str) -> list[tuple[str, str | None]]:
    rng = np.random.default_rng([seed, 10**9])
    counts = np.floor(np.asarray(CLASS_SHARES) * n).astype(int)
    counts[0] += n - counts.sum()
    counts = np.maximum(counts, 0)
    out: list[tuple[str, str | None]] = []
    for label, k in zip(CLASSES, counts):
        splits: list[str | None]
        if layout == "split":
            n_val = int(round(k * SPLIT_SHARES[1][1]))
            n_test = int(round(k * SPLIT_SHARES[2][1]))
            if k >= 3:
                n_val, n_test = max(1, n_val), max(1, n_test)
            splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (k - n_val - n_test)
            rng.shuffle(splits)
        else:
            splits = [None] * k
        out.extend((label, s) for s in splits)
    order = rng.permutation(len(out))  # interleave classes so image numbers say nothing about labels
    return [out[i] for i in order]


def _folder(out: Path, split: str | None, label: str) -> Path:
    return out / split / label if split else out / label


def _save_jpeg(path: Path, pixels: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=quality)


def synthesize(
    out: str | Path,
    *,
    n: int = 1000,
    size: int = 224,
    seed: int = 0,
    plant_issues: bool = False,
    shortcut: str | None = None,
    textures: Sequence[str] | None = None,
    layout: str = "split",
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> SynthResult:
    """Write a synthetic surface-inspection dataset to `out` (a new or empty folder).

    Args:
        n: images before planted extras (classes ok/scratch/spot/crack at 70/12/10/8 %).
        size: side in pixels (square JPEGs, quality 92; masks are PNG).
        seed: the same seed gives byte-identical images.
        plant_issues: add duplicates (within a class, across classes, across splits), near duplicates, corrupt
            files, blurry, tiny, extreme-aspect and greyscale images and wrong labels; list them in
            `planted_issues.json` (paths relative to `out`).
        shortcut: a class that also gets a small corner marker in every image, its defects drawn faint (a spurious
            cue easier to see than the defect).
        textures: draw every surface from these (names from TEXTURES; default all four). The full set in
            TEXTURES order gives the default images byte for byte; two disjoint sets (e.g. brushed,cast for
            training and woven,painted for production) make a texture shift.
        layout: "split" (out/{train,val,test}/<class>/, ready for `sightline train out`) or "flat".
        workers: threads drawing images (default: this one below SERIAL_BELOW px, else up to 4); the images do not
            depend on it.
        progress: hears the task 'rendering images' advance by one per image written.

    Example:
        >>> synthesize("demo-data", n=200, size=96, seed=0).counts["train"]
        {'ok': 98, 'scratch': 17, 'spot': 14, 'crack': 11}
    """
    if layout not in ("split", "flat"):
        raise UserInputError(f"layout must be 'split' or 'flat', not '{layout}'")
    if shortcut is not None and shortcut not in CLASSES:
        raise UserInputError(f"--shortcut '{shortcut}' is not a class; choose one of {', '.join(CLASSES)}")
    texture_pool = _texture_pool(textures)
    if seed < 0:  # numpy's generators take 0 .. any size; a negative one was a ValueError traceback
        raise UserInputError(f"--seed {seed} must be 0 or more.")
    if n < 20 or not 32 <= size <= MAX_SIZE:  # --size 100000 was a MemoryError traceback (a 149 GiB grid)
        raise UserInputError(f"need n >= 20 images of size 32 to {MAX_SIZE} pixels (got n={n}, size={size})")
    if plant_issues and n < MIN_N_PLANTED:
        raise UserInputError(f"--plant-issues needs n >= {MIN_N_PLANTED} (got n={n}): the planted problems are copies "
                             "and edits of existing training images")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"output '{out}' already exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)

    plan = _labels_and_splits(n, seed, layout)
    for label, split in set(plan):
        _folder(out, split, label).mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n)))
    names = [f"{label}_{i:0{width}d}" for i, (label, _) in enumerate(plan)]

    def write(i: int) -> str:
        label, split = plan[i]
        pixels, mask = render_sample(seed, i, label, size, shortcut=(label == shortcut), textures=texture_pool)
        folder = _folder(out, split, label)
        _save_jpeg(folder / f"{names[i]}.jpg", pixels)
        if mask is not None:
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(folder / f"{names[i]}{MASK_SUFFIX}", optimize=False)
        steps.advance()
        return (folder / f"{names[i]}.jpg").relative_to(out).as_posix()

    # Small matrix products in BLAS's own threads cost 10x more than they compute: our threads do the parallelism.
    # Below SERIAL_BELOW px an image is too little work for a thread to run long without the GIL: threads only
    # contend for it (2 cores, 300 images: at 64 px one thread took 0.39 s wall and CPU, three 0.44 s wall and 0.55 s
    # CPU; at 96 px the same wall, 40 % more CPU; at 128 px three were 1.2x faster, at 224 px 1.6x).
    threads = workers or (1 if size < SERIAL_BELOW else min(4, (os.cpu_count() or 1) + 1))
    with threadpool_limits(limits=1), Steps(progress, "rendering images", n) as steps:
        if threads == 1:
            paths = [write(i) for i in range(n)]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                paths = list(pool.map(write, range(n)))

    planted = _plant(out, paths, plan, seed=seed, size=size, textures=texture_pool) if plant_issues else None
    (out / "sightline.yaml").write_text(SPEC_YAML)
    counts: dict[str, dict[str, int]] = {}
    for p in out.rglob("*.jpg"):
        rel = p.relative_to(out).parts
        key, label = (rel[0], rel[1]) if layout == "split" else ("all", rel[0])
        counts.setdefault(key, {c: 0 for c in CLASSES})[label] += 1
    total = sum(sum(c.values()) for c in counts.values())
    return SynthResult(out=out, layout=layout, counts=counts, n_images=total, planted=planted)


def _texture_pool(textures: Sequence[str] | None) -> tuple[str, ...]:
    """The textures to draw surfaces from: all of TEXTURES by default; UserInputError for an unknown, repeated or
    empty set."""
    if textures is None:
        return TEXTURES
    pool = tuple(textures)
    unknown = [t for t in pool if t not in TEXTURES]
    if unknown:
        raise UserInputError(f"--textures: unknown texture(s) {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(TEXTURES)}")
    if not pool or len(set(pool)) != len(pool):
        raise UserInputError(f"--textures needs one or more distinct textures of {', '.join(TEXTURES)} "
                             f"(got {', '.join(pool) or 'none'})")
    return pool


def _plant(out: Path, paths: list[str], plan: list[tuple[str, str | None]], *, seed: int, size: int,
           textures: Sequence[str] = TEXTURES) -> dict:
    """Add known problems next to the clean images; returns what was planted (paths relative to `out`)."""
    rng = np.random.default_rng([seed, 7_000_000])
    by_label: dict[str, list[int]] = {}
    for i, (label, split) in enumerate(plan):
        if split in (None, "train"):
            by_label.setdefault(label, []).append(i)
    k = max(2, len(paths) // 100)  # about 1 % of the data per kind of problem
    used: set[int] = set()

    def pick(label: str | None = None) -> int:
        pool = by_label[label] if label else [i for ids in by_label.values() for i in ids]
        choices = [i for i in pool if i not in used]
        if not choices:  # guarded by MIN_N_PLANTED; a clear error should the plan ever change
            raise UserInputError(f"too few images ({len(paths)}) to plant every kind of problem; use a larger --n")
        i = int(rng.choice(choices))
        used.add(i)
        return i

    def place(rel_src: str, label: str, split: str | None, name: str, data: bytes | None = None) -> str:
        dst = _folder(out, split, label) / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data if data is not None else (out / rel_src).read_bytes())
        mask = _mask_path(out / rel_src) if rel_src else None
        if mask is not None and mask.is_file() and dst.parent.name == mask.parent.name:  # same class: same region
            shutil.copyfile(mask, _mask_path(dst))
        return dst.relative_to(out).as_posix()

    def remove(rel: str) -> None:
        (out / rel).unlink()
        _mask_path(out / rel).unlink(missing_ok=True)

    layout_split = plan[0][1] is not None
    planted: dict = {"exact_duplicates": [], "near_duplicates": [], "conflicting_labels": [], "cross_split_duplicates": [],
                     "corrupt": [], "blurry": [], "too_small": [], "extreme_aspect": [], "greyscale": [], "wrong_labels": []}
    for j in range(k):  # exact copy in the same class and split
        i = pick()
        label, split = plan[i]
        planted["exact_duplicates"].append([paths[i], place(paths[i], label, split, f"{label}_copy{j}.jpg")])
    for j in range(k):  # re-encoded, slightly smaller and brighter copy
        i = pick()
        label, split = plan[i]
        with Image.open(out / paths[i]) as im:
            variant = im.resize((size * 7 // 8, size * 7 // 8), Image.Resampling.LANCZOS).point(lambda v: min(255, int(v * 1.06) + 3))
        buf = io.BytesIO()
        variant.save(buf, "JPEG", quality=85)
        planted["near_duplicates"].append([paths[i], place(paths[i], label, split, f"{label}_near{j}.jpg", buf.getvalue())])
    for j in range(k):  # the same picture filed under a second label
        i = pick("ok")
        other = CLASSES[1 + j % 3]
        planted["conflicting_labels"].append([paths[i], place(paths[i], other, plan[i][1], f"{other}_relabel{j}.jpg")])
    if layout_split:
        for j in range(k):  # a training image also in test: leakage
            i = pick()
            label = plan[i][0]
            planted["cross_split_duplicates"].append([paths[i], place(paths[i], label, "test", f"{label}_leak{j}.jpg")])
    for j in range(k):  # truncated JPEGs: valid header, missing data
        i = pick()
        label, split = plan[i]
        data = (out / paths[i]).read_bytes()
        planted["corrupt"].append(place(paths[i], label, split, f"{label}_corrupt{j}.jpg", data[: len(data) // 3]))
    for j in range(max(3, 2 * k)):  # out-of-focus shots
        i = pick()
        label, split = plan[i]
        with Image.open(out / paths[i]) as im:
            blurred = im.filter(ImageFilter.GaussianBlur(radius=max(2.5, size / 50)))
        buf = io.BytesIO()
        blurred.save(buf, "JPEG", quality=JPEG_QUALITY)
        planted["blurry"].append(place(paths[i], label, split, f"{label}_blur{j}.jpg", buf.getvalue()))
        remove(paths[i])  # the blurred shot replaces the sharp one (else it is also a near duplicate)
    for kind, shape in (("too_small", (20, 20)), ("extreme_aspect", (size // 6, size))):
        pixels, _ = render_sample(seed, 10**6 + len(kind), "ok", size, textures=textures)
        img = Image.fromarray(pixels).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
        split = "train" if layout_split else None
        planted[kind].append(place("", "ok", split, f"ok_{kind}.jpg", buf.getvalue()))
    i = pick("ok")
    with Image.open(out / paths[i]) as im:
        buf = io.BytesIO()
        im.convert("L").save(buf, "JPEG", quality=JPEG_QUALITY)
    planted["greyscale"].append(place(paths[i], "ok", plan[i][1], "ok_grey.jpg", buf.getvalue()))
    remove(paths[i])
    for j in range(k):  # a defect-free image filed as a defect (rename keeps the pixels, changes the label)
        i = pick("ok")
        given = CLASSES[1 + j % 3]
        src = out / paths[i]
        dst = _folder(out, plan[i][1], given) / f"{given}_mislabel{j}.jpg"
        os.replace(src, dst)
        planted["wrong_labels"].append({"path": dst.relative_to(out).as_posix(), "true_label": "ok", "given_label": given})
    (out / "planted_issues.json").write_text(json.dumps(planted, indent=2) + "\n")
    return planted
