"""Training configuration: one dataclass, a comment per field, written next to the results as RUN/config.yaml."""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from sightline.errors import UserInputError

__all__ = ["TrainConfig", "load_config"]

_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_CHOICES = {
    "schedule": ("cosine", "plateau"),
    "augment": ("light", "strong", "none"),
    "balance": ("auto", "none", "weights", "sampler"),
    "monitor": ("val_macro_f1", "val_acc", "val_loss"),
    "precision": ("auto", "32-true", "bf16-mixed", "16-mixed"),
}


@dataclass
class TrainConfig:
    # --- model ---
    model: str = "tf_efficientnet_lite0"  # timm architecture; Lite0/1/2 have offline ImageNet weights
    weights: str = "auto"  # "auto" (packaged, else hub), "none" (random init) or a .safetensors/.pth file
    input_size: int | None = None  # square input side in px; None = the model's pretrained size (224 for Lite0)
    drop_rate: float = 0.2  # dropout before the classifier
    drop_path_rate: float = 0.1  # stochastic depth in the blocks
    # --- optimisation ---
    epochs: int = 6  # upper bound; hymenoptera (243 photos, Lite0 224 px) is at 0.97 val accuracy after 2
    batch_size: int = 32
    lr: float = 1e-3  # peak learning rate of the head; the backbone gets lr * backbone_lr_scale
    backbone_lr_scale: float = 0.1  # pretrained layers move 10x slower than the fresh head (1.0 from scratch)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to norms and biases)
    schedule: str = "cosine"  # "cosine": linear warm-up then cosine to 0; "plateau": x0.1 when val stalls
    warmup_epochs: float = 1.0  # linear warm-up length for "cosine", in epochs
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    freeze_epochs: int = 0  # train only the head for this many epochs, then unfreeze the backbone
    # --- data ---
    augment: str = "light"  # "light": resized crop, flips, rotation, colour; "strong": + TrivialAugment, erasing
    crop_pct: float | None = None  # share of the resized image the eval center crop keeps; None = the model's
    #   (0.875 for Lite0); 1.0 keeps the whole frame, right for inspection images with defects near the edge
    vflip: bool = False  # also flip vertically (fine for parts and micrographs, wrong for street scenes)
    balance: str = "auto"  # class imbalance: "auto" picks from the max/min class ratio, or weights/sampler/none
    num_workers: int | None = None  # DataLoader workers; None = half the CPU cores, at most 4
    # --- stopping and checkpoints ---
    monitor: str = "val_macro_f1"  # validation metric for early stopping and the best checkpoint
    patience: int = 10  # epochs without improvement before early stopping
    max_time_s: float | None = None  # wall-clock budget for fitting, seconds; stops cleanly at the limit
    # --- hardware ---
    precision: str = "auto"  # "auto": bf16-mixed where the hardware has bf16 units (CUDA, AMX/AVX512-BF16 CPUs)
    channels_last: bool | None = None  # None = on with CUDA or bf16 (what those kernels want)
    accelerator: str = "auto"  # Lightning accelerator: auto, cpu, gpu
    devices: str = "auto"  # Lightning devices: "auto", a count ("2") or a list ("0,1")
    num_nodes: int = 1  # machines for multi-node DDP (torchrun / SLURM set the rest)
    strategy: str = "auto"  # Lightning strategy: auto, ddp, ddp_spawn, ...
    # --- reproducibility ---
    seed: int = 0  # seeds Python, NumPy, torch and the DataLoader workers
    deterministic: bool = False  # torch deterministic algorithms (slower; same seed gives the same weights)

    def __post_init__(self) -> None:
        self._coerce_types()
        if not re.fullmatch(r"auto|\d+|\d+(,\d+)+", str(self.devices).replace(" ", "")):
            raise UserInputError(f"devices={self.devices!r} must be 'auto', a count such as 2, or a list such as 0,1.")
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UserInputError(f"{name}={value!r} is not one of {', '.join(allowed)}.")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UserInputError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.lr <= 0:
            raise UserInputError(f"lr={self.lr} must be positive.")
        if self.crop_pct is not None and not 0.1 <= self.crop_pct <= 1.0:
            raise UserInputError(f"crop_pct={self.crop_pct} must be between 0.1 and 1.0.")
        if self.input_size is not None and self.input_size < 16:
            raise UserInputError(f"input_size={self.input_size} is too small; use at least 16 pixels.")

    def _coerce_types(self) -> None:
        """Values from YAML or the command line arrive as text ('1e-3' is a string to YAML 1.1): convert each to
        its field's declared type, or say which field is wrong, in one line."""
        for f in fields(self):
            kind = str(f.type).replace(" ", "")
            optional = kind.endswith("|None")
            kind = kind.removesuffix("|None")
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            try:
                if kind == "bool":
                    if isinstance(value, str) and value.strip().lower() in _BOOLS:
                        value = _BOOLS[value.strip().lower()]
                    elif not isinstance(value, bool):
                        raise ValueError
                elif kind == "int":
                    if isinstance(value, bool) or float(value) != int(float(value)):
                        raise ValueError
                    value = int(float(value))
                elif kind == "float":
                    if isinstance(value, bool):
                        raise ValueError
                    value = float(value)
                elif kind == "str":
                    value = str(value)
            except (TypeError, ValueError):
                what = {"bool": "true or false", "int": "a whole number", "float": "a number"}.get(kind, kind)
                raise UserInputError(f"{f.name}={value!r} must be {what}"
                                     f"{' or null' if optional else ''}.") from None
            setattr(self, f.name, value)

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with some fields changed; an unknown name is a UserInputError listing the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserInputError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        import yaml

        path = Path(path)  # atomic: every DDP rank may write the same file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)


def load_config(path: str | Path) -> TrainConfig:
    """Read a config.yaml (e.g. RUN/config.yaml of an earlier run) into a TrainConfig."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"config '{path}' cannot be read ({exc}).") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"config '{path}' must be a mapping of option: value.")
    return TrainConfig().with_overrides(**data)
