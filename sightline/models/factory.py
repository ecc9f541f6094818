"""The only module that imports timm. `create_model` builds a classifier; weights are resolved in
sightline.models.pretrained."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sightline.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = ["create_model"]


def create_model(
    name: str,
    num_classes: int,
    *,
    weights: str | Path = "none",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> torch.nn.Module:
    """A timm classifier with `num_classes` outputs (logits).

    weights: "none" (random init), or a path to a .safetensors / .pth / .pt state dict of this architecture.
    """
    import timm

    if name not in timm.list_models():
        raise ModelError(f"unknown model '{name}'.")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate,
                              drop_path_rate=drop_path_rate)
    if str(weights) != "none":
        raise ModelError(f"weights={weights!r} not supported yet")
    return model
