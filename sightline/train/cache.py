"""Decode each training image once: `ImageCache` holds the decoded, resized uint8 images of a split in memory
(up to a RAM budget), the rest in a temporary file on disk (up to half the free space), and decodes whatever
is left every time it is asked. Augmentation then runs on the cached pixels each epoch.

Why: a JPEG decode plus a resize costs several milliseconds per image and per epoch and, on a small CPU, takes
cores from the training step; the cached image at the training resolution is a few hundred kB (a 224 px run
keeps 280 px on the shorter side: about 0.3 MB per 4:3 photo, 3 GB for 10 000 photos).

Shared with DataLoader workers by fork (copy-on-write pages); the disk part is reopened in each process.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sightline.errors import UserInputError

__all__ = ["ImageCache", "CacheStats", "parse_bytes", "ram_budget", "available_memory"]

DEFAULT_RAM_SHARE = 0.25  # "auto": a quarter of the memory available when the run starts
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def available_memory() -> int:
    """Bytes of memory available to new allocations without swapping (Linux MemAvailable; else free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 * 10**9  # no way to ask (e.g. macOS without sysconf pages): assume a small machine


def parse_bytes(text: str | int | float, *, field: str = "cache_ram") -> int:
    """'2GB', '512MiB', '1.5g', '300000000' -> bytes. A bad value is a one-line UserInputError naming `field`."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise UserInputError(f"{field}={text!r} is not a size; write e.g. 2GB, 512MB, 25% or auto.")
    return int(float(m.group(1)) * _UNITS[unit])


def ram_budget(value: str | int | float | None, *, field: str = "cache_ram") -> int:
    """The RAM budget in bytes for `value`: 'auto' (a quarter of the available memory), a share ('40%') of
    the available memory, or a size ('2GB'). Negative or over 100 % is a one-line UserInputError."""
    text = "auto" if value is None else str(value).strip().lower()
    if text == "auto":
        return int(available_memory() * DEFAULT_RAM_SHARE)
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 1.0:
            raise UserInputError(f"{field}={value!r}: a share of the available memory is between 0% and 100%.")
        return int(available_memory() * share)
    if text.startswith("-"):
        raise UserInputError(f"{field}={value!r} is negative; give a size such as 2GB, or 0 to keep no image in memory.")
    return parse_bytes(text, field=field)


@dataclass
class CacheStats:
    """Where the images of one split are: in memory, on disk, or decoded on every use (counts and bytes)."""

    images: int = 0
    in_ram: int = 0
    on_disk: int = 0
    decoded_each_time: int = 0
    ram_bytes: int = 0
    disk_bytes: int = 0
    fill_seconds: float = 0.0

    def describe(self) -> str:
        parts = [f"{self.in_ram} in memory ({self.ram_bytes / 1e6:.0f} MB)"]
        if self.on_disk:
            parts.append(f"{self.on_disk} on disk ({self.disk_bytes / 1e6:.0f} MB)")
        if self.decoded_each_time:
            parts.append(f"{self.decoded_each_time} decoded every epoch")
        return f"{self.images} images decoded once in {self.fill_seconds:.1f} s: " + ", ".join(parts)


class ImageCache:
    """`load(i)` (a deterministic decode + resize to an (H, W, 3) uint8 array) for i in range(n), computed once.

    `fill()` decodes every image with a thread pool (Pillow releases the GIL while decoding and resizing) and
    keeps each one in memory while `ram_bytes` allows, then in a temporary file while `disk_bytes` allows (None:
    half of the free space of the temporary folder); anything beyond is decoded again on every access.
    `cache[i]` returns the same array `load(i)` does, bit for bit. `close()` (or garbage collection) removes the
    temporary file.
    """

    def __init__(self, load: Callable[[int], np.ndarray], n: int, *, ram_bytes: int, disk_bytes: int | None = None,
                 disk_dir: str | Path | None = None, threads: int | None = None) -> None:
        self.load = load
        self.n = n
        self.ram_bytes = max(0, int(ram_bytes))
        self.disk_bytes = disk_bytes
        self.disk_dir = disk_dir
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._ram: list[np.ndarray | None] = [None] * n
        self._disk: list[tuple[int, tuple[int, ...]] | None] = [None] * n  # (byte offset, shape) in the file
        self._file: Path | None = None
        self._map: np.memmap | None = None  # opened lazily in each process (workers included)
        self._tmpdir: str | None = None
        self._finalizer: Any = None
        self.stats = CacheStats(images=n)
        self.filled = False

    def fill(self) -> CacheStats:
        """Decode every image once (idempotent). Errors of `load` (e.g. a corrupt file) propagate."""
        if self.filled:
            return self.stats
        started = time.perf_counter()
        ram_left = self.ram_bytes
        disk_left = self.disk_bytes
        writer = None
        offset = 0
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            # map() keeps the order, so what goes where does not depend on thread timing.
            for i, array in enumerate(pool.map(self.load, range(self.n))):
                size = array.nbytes
                if size <= ram_left:
                    self._ram[i] = array
                    ram_left -= size
                    self.stats.in_ram += 1
                    self.stats.ram_bytes += size
                    continue
                if writer is None and self._open_disk():
                    disk_left = self._disk_allowance() if disk_left is None else disk_left
                    writer = open(self._file, "wb")  # noqa: SIM115 - closed below, after the loop
                if writer is not None and disk_left is not None and size <= disk_left:
                    writer.write(np.ascontiguousarray(array).tobytes())
                    self._disk[i] = (offset, tuple(array.shape))
                    offset += size
                    disk_left -= size
                    self.stats.on_disk += 1
                    self.stats.disk_bytes += size
                else:
                    self.stats.decoded_each_time += 1
        if writer is not None:
            writer.close()
        self.stats.fill_seconds = time.perf_counter() - started
        self.filled = True
        return self.stats

    def _open_disk(self) -> bool:
        if self.disk_bytes == 0:
            return False
        self._tmpdir = tempfile.mkdtemp(prefix="sightline-cache-", dir=self.disk_dir)
        self._file = Path(self._tmpdir) / "images.u8"
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        return True

    def _disk_allowance(self) -> int:
        assert self._tmpdir is not None
        return shutil.disk_usage(self._tmpdir).free // 2  # leave the other half to checkpoints and everyone else

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        array = self._ram[i]
        if array is not None:
            return array
        where = self._disk[i]
        if where is not None:
            if self._map is None:
                assert self._file is not None
                self._map = np.memmap(self._file, dtype=np.uint8, mode="r")
            offset, shape = where
            return np.array(self._map[offset:offset + int(np.prod(shape))]).reshape(shape)
        return self.load(i)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_map"] = None  # a memmap is reopened in the receiving process, not pickled whole
        state["_finalizer"] = None  # only the process that made the file removes it
        return state

    def close(self) -> None:
        """Remove the disk part (the memory part goes with the object)."""
        self._map = None
        if self._finalizer is not None:
            self._finalizer()

