"""PyTorch logits for a list of image files with a bundle: decode (sightline.data.images.load_image), eval
preprocessing from the bundle (sightline.data.transforms), batched forward passes under torch.inference_mode.

Unreadable files are reported in `failed` ({"path", "reason"}) and skipped, never a crash. JPEGs decode in draft
mode at no less than the resize size, as the server's predictor does, so the figures describe what it serves.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sightline.bundle import Bundle, Preprocessing
from sightline.errors import ImageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Inputs",
    "load_crops",
    "crops_to_batch",
    "logits_for_crops",
    "predict_logits",
    "default_device",
    "fast_inference",
]


@dataclass
class Inputs:
    """Decoded images at network resolution (after resize + center crop, before normalisation)."""

    paths: list[Path]  # the files that decoded, in input order
    crops: np.ndarray  # (N, S, S, 3) uint8 RGB
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    index: list[int] = field(default_factory=list)  # position of each kept file in the input list


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fast_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and channels-last memory format (in place). Measured on 2 CPU cores with Lite0 at 224 px:
    24-29 ms per image instead of 41-48 ms; convolution libraries prefer NHWC on CUDA too. Inputs stay NCHW."""
    import torch

    return model.eval().to(memory_format=torch.channels_last)


def load_crops(paths: Sequence[str | Path], pre: Preprocessing) -> Inputs:
    """Decode and resize/center-crop each file to (S, S, 3) uint8; failures are collected, not raised."""
    from sightline.data.images import load_image
    from sightline.data.transforms import resize_center_crop

    kept: list[Path] = []
    crops: list[np.ndarray] = []
    failed: list[dict[str, str]] = []
    index: list[int] = []
    side = pre.resize_size
    for i, p in enumerate(paths):
        try:
            image = load_image(p, draft=(side, side))
        except ImageError as exc:
            failed.append({"path": str(p), "reason": str(exc)})
            continue
        crops.append(np.asarray(resize_center_crop(image, pre), dtype=np.uint8))
        kept.append(Path(p))
        index.append(i)
    s = pre.input_size
    array = np.stack(crops) if crops else np.zeros((0, s, s, 3), dtype=np.uint8)
    return Inputs(paths=kept, crops=array, failed=failed, index=index)


def crops_to_batch(crops: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 network input (the bundle's mean/std)."""
    from sightline.data.transforms import normalize, stack

    return stack([normalize(c, pre) for c in crops]) if len(crops) else np.zeros(
        (0, 3, pre.input_size, pre.input_size), dtype=np.float32
    )


def logits_for_crops(
    model: torch.nn.Module,
    crops: np.ndarray,
    pre: Preprocessing,
    *,
    batch_size: int = 64,
    device: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(N, S, S, 3) uint8 crops -> (N, K) float32 logits, `batch_size` images per forward pass."""
    import torch

    device = device or str(next(model.parameters()).device)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            chunk = crops[start : start + batch_size]
            x = torch.from_numpy(crops_to_batch(chunk, pre)).to(device)
            out.append(model(x).float().cpu().numpy())
            if on_batch is not None:
                on_batch(len(chunk))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out, axis=0)


def predict_logits(
    bundle: Bundle,
    paths: Sequence[str | Path],
    *,
    model: torch.nn.Module | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    description: str = "predicting",
    keep_crops: bool = True,
) -> tuple[np.ndarray, Inputs]:
    """Logits (N_ok, K) for the files that decode, plus the decoded Inputs (paths, crops, failed).

    `keep_crops=False` drops the decoded pixels (N * S * S * 3 bytes) once they are scored. Files are decoded
    `batch_size` at a time so a progress bar moves with the work; `model` defaults to
    `bundle.load_model(device)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    device = device or default_device()
    model = model if model is not None else fast_inference(bundle.load_model(device))
    pre = bundle.preprocessing
    logits: list[np.ndarray] = []
    parts: list[Inputs] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=len(paths))
        for start in range(0, len(paths), batch_size):
            part = load_crops(paths[start : start + batch_size], pre)
            part.index = [start + i for i in part.index]
            parts.append(part)
            if len(part.crops):
                logits.append(logits_for_crops(model, part.crops, pre, batch_size=batch_size, device=device))
            if not keep_crops:
                part.crops = part.crops[:0]
            bar.advance(task, min(batch_size, len(paths) - start))
    k = len(bundle.classes)
    s = pre.input_size
    inputs = Inputs(
        paths=[p for part in parts for p in part.paths],
        crops=np.concatenate([part.crops for part in parts]) if parts else np.zeros((0, s, s, 3), np.uint8),
        failed=[f for part in parts for f in part.failed],
        index=[i for part in parts for i in part.index],
    )
    return (np.concatenate(logits) if logits else np.zeros((0, k), dtype=np.float32)), inputs
