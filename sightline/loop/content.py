"""A bundle's content hash: what identifies a model version in the registry and in a challenge.

sha256 over the files that decide what the model answers: model.json (classes, preprocessing, temperature,
thresholds), weights.safetensors and the ONNX graphs, each as "<name>\\t<sha256 of its bytes>" in a fixed order.
Any change to one of them (even `sightline evaluate` rewriting the temperature) is a new version.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from sightline.bundle import MODEL_JSON, ONNX, ONNX_INT8, WEIGHTS, resolve_bundle_dir
from sightline.errors import BundleError

__all__ = ["HASHED_FILES", "bundle_hash", "hashed_files"]

HASHED_FILES = (MODEL_JSON, WEIGHTS, ONNX, ONNX_INT8)  # in this order; the ONNX ones only when present


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hashed_files(folder: str | Path) -> list[Path]:
    """The files of a bundle folder (or RUN folder) that its hash covers. Raises BundleError without weights."""
    folder = resolve_bundle_dir(folder)
    if not (folder / WEIGHTS).is_file():
        raise BundleError(f"{folder / WEIGHTS} is missing; a registered model needs its weights.")
    return [folder / name for name in HASHED_FILES if (folder / name).is_file()]


def bundle_hash(folder: str | Path) -> str:
    """64 hex characters identifying the bundle's content (see the module docstring)."""
    lines = [f"{p.name}\t{_sha256(p)}" for p in hashed_files(folder)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()

