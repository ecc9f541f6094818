"""Content fingerprints: sha256 of the bytes (exact duplicates) and a DCT perceptual hash (near duplicates).

The perceptual hash is the classic pHash: grey 32x32 thumbnail -> 2-D DCT -> the 8x8 lowest frequencies without
the DC term -> one bit per coefficient (above / below their median) -> a 64-bit integer. Resizing, re-encoding,
mild blur and brightness changes move few bits; different images differ in about half of them (32 of 64).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

__all__ = ["sha256_bytes", "sha256_file", "phash", "phash_hex", "hamming_matrix", "near_duplicate_pairs"]

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


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash of an image (any mode, any size)."""
    grey = image.convert("L").resize((_THUMB, _THUMB), Image.Resampling.BOX)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:_LOW, :_LOW].ravel()
    ac = coeffs[1:]  # the DC term is the mean brightness: it carries no structure
    bits = ac > np.median(ac)
    value = 0
    for bit in bits:  # 63 AC bits; the top bit stays 0 so the value fits a signed int64 column anywhere
        value = (value << 1) | int(bit)
    return value


def phash_hex(value: int) -> str:
    return f"{value:016x}"


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) and (M,) uint64 hashes -> (N, M) uint8 number of differing bits (0..64)."""
    x = np.bitwise_xor(a.astype(np.uint64)[:, None], b.astype(np.uint64)[None, :])
    return np.bitwise_count(x)


def near_duplicate_pairs(hashes: np.ndarray, *, max_distance: int, block: int = 256) -> np.ndarray:
    """All pairs (i, j), i < j, whose hashes differ in at most `max_distance` bits: (P, 2) int64.

    Compares every pair in blocks of `block` rows (N=10,000 takes about a second)."""
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
    return np.concatenate(found, axis=0) if found else np.zeros((0, 2), dtype=np.int64)
