"""Content fingerprints: sha256 of the bytes (exact duplicates) and a DCT perceptual hash (near duplicates).

The perceptual hash is the classic pHash: grey 32x32 thumbnail -> 2-D DCT -> the 8x8 lowest frequencies without
the DC term -> one bit per coefficient (above / below their median) -> a 64-bit integer. Resizing, re-encoding,
mild blur and brightness changes move few bits; different images differ in about half of them (32 of 64).

A mirrored (horizontally flipped) copy is no near duplicate by that hash, yet datasets augmented offline hold them,
and one in train beside its original in test is a leak. `phashes` also returns the hash of the mirror image, from the
same DCT: flipping the columns multiplies the coefficient of horizontal frequency v by (-1)^v, so it costs no second
resize or DCT. An image and a mirrored copy of it have hash(A) close to mirror_hash(B).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

__all__ = ["sha256_bytes", "sha256_file", "phash", "phashes", "phash_hex", "hamming_matrix", "near_duplicate_pairs"]

_THUMB = 32  # side of the grey thumbnail the DCT is taken on
_LOW = 8  # 8x8 low frequencies -> 64 bits


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# (-1)^v for the 8x8 low frequencies (u vertical, v horizontal), row-major: the DCT of the mirror image
_MIRROR = np.tile((-1.0) ** np.arange(_LOW), _LOW)


# the weight of each of the 63 AC bits, the first one the most significant
_WEIGHTS = np.left_shift(np.uint64(1), np.arange(_LOW * _LOW - 2, -1, -1, dtype=np.uint64))


def _bits(coeffs: np.ndarray) -> int:
    ac = coeffs[1:]  # the DC term is the mean brightness: it carries no structure
    # np.median of the 63 values, which is their 32nd smallest (an odd count: no average), without np.median's
    # checks (a third of the hash's time)
    median = np.partition(ac, ac.size // 2)[ac.size // 2]
    # 63 AC bits; the top bit stays 0 so the value fits a signed int64 column anywhere
    return int(_WEIGHTS[ac > median].sum(dtype=np.uint64))


def phashes(image: Image.Image) -> tuple[int, int]:
    """(perceptual hash of the image, perceptual hash of its mirror image), 63-bit each; any mode, any size."""
    grey = image if image.mode == "L" else image.convert("L")  # resize makes a new image: no copy needed
    grey = grey.resize((_THUMB, _THUMB), Image.Resampling.BOX)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:_LOW, :_LOW].ravel()
    return _bits(coeffs), _bits(coeffs * _MIRROR)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash of an image (any mode, any size)."""
    return phashes(image)[0]


def phash_hex(value: int) -> str:
    return f"{value:016x}"


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) and (M,) uint64 hashes -> (N, M) uint8 number of differing bits (0..64)."""
    x = np.bitwise_xor(a.astype(np.uint64)[:, None], b.astype(np.uint64)[None, :])
    return np.bitwise_count(x)


def near_duplicate_pairs(hashes: np.ndarray, *, max_distance: int, block: int = 256,
                         mirrored: np.ndarray | None = None, mirror_distance: int | None = None) -> np.ndarray:
    """All pairs (i, j), i < j, whose hashes differ in at most `max_distance` bits: (P, 2) int64, without repeats.

    `mirrored`: (N,) the hashes of the mirror images (`phashes`); a pair whose one hash is within `mirror_distance`
    bits (default `max_distance`) of the other's mirrored hash (a horizontally flipped copy) is found too. Compares
    every pair in blocks of `block` rows (N=10,000 takes about a second, two with `mirrored`)."""
    mirror_distance = max_distance if mirror_distance is None else mirror_distance
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found = []
    for start in range(0, n, block):
        d = hamming_matrix(hashes[start : start + block], hashes[start:])
        i, j = np.nonzero(d <= max_distance)
        i = i + start
        j = j + start
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], axis=1))
        if mirrored is not None and mirror_distance >= 0:  # each ordered pair: hash(i) against the mirror of j
            d = hamming_matrix(hashes[start : start + block], np.asarray(mirrored, dtype=np.uint64))
            i, j = np.nonzero(d <= mirror_distance)
            i = i + start
            keep = i != j
            found.append(np.stack([np.minimum(i, j)[keep], np.maximum(i, j)[keep]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found, axis=0).astype(np.int64)
    return np.unique(pairs, axis=0) if mirrored is not None else pairs
