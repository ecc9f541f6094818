"""Training configuration: one pydantic model, a comment per field, written next to the results as RUN/config.yaml.

Values from YAML or the command line may arrive as text ('1e-3' is a string to YAML 1.1, 'yes' a bool); each is
converted to its field's type, and anything that does not fit is a one-line UserInputError naming the field."""
from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, ValidationInfo, field_validator

from sightline.errors import UserInputError, validation_error

__all__ = ["SMALL_IMAGE_RECIPE", "TrainConfig", "load_config"]

# What a validation error names as its source: "training config" for keyword options, the file in load_config.
_SOURCE: ContextVar[str] = ContextVar("train_config_source", default="training config")

Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what NumPy and Lightning's seeding accept
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
# below 16 px the stem's downsampling leaves nothing; above 2048 px one batch of activations outgrows any machine's
# memory (--input-size 100000 ran until the kernel killed the process)
Pixels = Annotated[int, Field(ge=16, le=2048)]
Share = Annotated[float, Field(ge=0.1, le=1.0)]
# dropout, stochastic depth, label smoothing: 1.5 was a ValueError / RuntimeError traceback from torch mid-run
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
# weight decay, the backbone's rate scale, warm-up epochs: NaN or a negative value trained without a word (NaN
# weights, or the backbone climbing its loss)
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Schedule = Literal["cosine", "plateau"]
Augment = Literal["light", "strong", "none"]
Balance = Literal["auto", "none", "weights", "sampler"]
Monitor = Literal["val_macro_f1", "val_acc", "val_loss"]
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed"]


# For images smaller than the model's pretrained size and upsampled to be trained (sightline.train.input_size:
# small_images, and an input size above the native one). Each value is a bound, applied as max (backbone_lr_scale,
# patience) or min (warmup_epochs) with the config's own, and the run says what changed. Why: upsampled small
# images are far from what the ImageNet weights saw, and the backbone must move to fit them. At the photo recipe
# (backbone 10x slower than the head, a full warm-up epoch, stop on the first flat epoch) scikit-learn's 8 px digits
# stood at 0.54 val accuracy after 3 epochs where a plain loop (AdamW 3e-4 on every layer) reached 0.86, and 64 px
# photos stopped after 2 epochs on one noisy dip of 76 val images (0.803). One rate for every layer, as BiT
# fine-tunes (Kolesnikov et al., 2020), a short warm-up and a second epoch of patience, measured with
# benchmarks/time_to_accuracy.py (Lite0 at 128 px): 64 px photos reach the plain loop's 0.868 after 2 epochs (with
# backbone 0.5 and warm-up 0.5: after 4), digits its 0.937 after 3 (0.833, 0.930, 0.952). Photos at the pretrained
# size keep the recipe above: hymenoptera is at 0.947 val accuracy after 2 epochs with it.
SMALL_IMAGE_RECIPE: dict[str, float] = {"backbone_lr_scale": 1.0, "warmup_epochs": 0.2, "patience": 2}


class TrainConfig(BaseModel):
    """Every setting of a training run. `TrainConfig(**options)` and `load_config(file)` validate; bad values raise
    a one-line UserInputError naming the field, its value and what it must be."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # `devices: 2` in YAML is the text "2"

    # --- model ---
    model: str = "tf_efficientnet_lite0"  # timm architecture; Lite0/1/2 have offline ImageNet weights
    weights: str = "auto"  # "auto" (packaged, else hub), "none" (random init) or a .safetensors/.pth file
    input_size: Pixels | Literal["auto"] | None = "auto"  # square input side in px; "auto": the model's pretrained
    #   size (224 for Lite0), or for smaller images the smallest size a short probe finds as accurate (from the
    #   native size up; sightline.train.input_size); None = the model's pretrained size
    drop_rate: Probability = 0.2  # dropout before the classifier
    drop_path_rate: Probability = 0.1  # stochastic depth in the blocks
    # --- optimisation ---
    epochs: Count = 6  # upper bound; training stops sooner when validation saturates (patience, ceiling) or the
    #   time budget says so; hymenoptera (243 photos, Lite0 224 px) is at 0.95-0.97 val accuracy after 2
    batch_size: Count = 32
    lr: PositiveFloat | Literal["auto"] = 1e-3  # peak learning rate of the head; the backbone gets
    #   lr * backbone_lr_scale. "auto": a learning-rate range test picks it (sightline.train.lr_find; RUN/lr_find.png)
    lr_find_steps: Count = 100  # batches in that range test at most (fastai's 100); it restores the weights after
    backbone_lr_scale: NonNegativeFloat = 0.1  # pretrained layers move 10x slower than the fresh head (1.0 from scratch)
    weight_decay: NonNegativeFloat = 0.01  # AdamW decoupled weight decay (not applied to norms and biases)
    schedule: Schedule = "cosine"  # "cosine": linear warm-up then cosine to 0; "plateau": x0.1 when val stalls
    warmup_epochs: NonNegativeFloat = 0.25  # linear warm-up length for "cosine", in epochs. A quarter: fine-tuning sets are
    #   often a few batches an epoch (hymenoptera: 8), and a whole epoch of warm-up spent most of the first one at a
    #   low rate. Hymenoptera, seeds 0-2, bf16 and fp32: test 439/462 (0.950) against 434/462 (0.939) with 1.0, and
    #   4 of 6 runs stopped after 2 epochs, their first already at the best validation score (2 of 6 with 1.0)
    label_smoothing: Probability = 0.1  # cross-entropy label smoothing
    freeze_epochs: NonNegative = 0  # train only the head for this many epochs, then unfreeze the backbone
    small_image_recipe: bool = True  # images smaller than the model's pretrained size and upsampled to be trained
    #   (far from what the ImageNet weights saw) train with SMALL_IMAGE_RECIPE's values where those move the backbone
    #   faster or stop later than the values above; false: the values above as they are
    # --- data ---
    augment: Augment = "light"  # "light": resized crop, flips, rotation, colour; "strong": + TrivialAugment, erasing
    crop_pct: Share | None = None  # share of the resized image the eval center crop keeps; None = the model's
    #   (0.875 for Lite0); 1.0 keeps the whole frame, right for inspection images with defects near the edge
    vflip: bool = False  # also flip vertically (fine for parts and micrographs, wrong for street scenes)
    balance: Balance = "auto"  # class imbalance: "auto" picks from the max/min class ratio, or weights/sampler/none
    num_workers: NonNegative | None = None  # DataLoader workers; None = half the CPU cores, at most 4
    cache_ram: str = "auto"  # memory for decoded train/val images, decoded once: "auto" (a quarter of the available
    #   memory), a share ("40%"), a size ("2GB"); past it a temporary disk cache; "0": disk only; "off": decode
    #   every image every epoch
    # --- stopping and checkpoints ---
    monitor: Monitor = "val_macro_f1"  # validation metric for early stopping and the best checkpoint
    patience: Count = 1  # epochs without a better `monitor` before stopping (at once at its ceiling: 1.0, or the
    #   loss floor label smoothing allows). One flat epoch is saturation on the small validation sets fine-tuning
    #   starts from: hymenoptera's val accuracy is flat from the second epoch on, and each further epoch costs
    #   ~30 s on 2 cores (three runs, 4 and 6 planned epochs: test accuracy no better after epoch 2)
    max_time_s: PositiveFloat | None = None  # hard wall-clock limit for fitting, seconds; stops mid-epoch at the limit
    time_budget: str | None = None  # wall-clock budget of the whole run ("300", "90s", "5m", "1h30m"): the first
    #   epoch is measured, then the epochs that fit are planned and the schedule ends with them
    # --- hardware ---
    precision: Precision = "auto"  # "auto": on one CPU process, the faster of fp32 and bf16-mixed (bf16 only where
    #   the CPU has bf16 units), timed on the run's model (sightline.train.hardware; cached per machine); on CUDA
    #   bf16-mixed where supported
    channels_last: bool | None = None  # None = timed with the precision on CPU; on with CUDA
    accelerator: Accelerator = "auto"  # Lightning accelerator: auto, cpu, gpu (= cuda), mps
    devices: str = "auto"  # Lightning devices: "auto", a count ("2") or a list ("0,1")
    num_nodes: Count = 1  # machines for multi-node DDP (torchrun / SLURM set the rest)
    strategy: str = "auto"  # Lightning strategy: auto, ddp, ddp_spawn, ...
    # --- what the bundle holds ---
    reference: bool = True  # write the monitor's reference profile into the bundle (val softmax and features, a
    #   k-NN bank of train features, image statistics, the open-set score chosen against stand-in outliers;
    #   sightline.evaluate.reference), so a bundle served straight after training can be monitored; `evaluate`
    #   refreshes it at the fitted temperature
    # --- reproducibility ---
    seed: Seed = 0  # seeds Python, NumPy, torch and the DataLoader workers
    deterministic: bool = False  # torch deterministic algorithms (slower; same seed gives the same weights)

    def __init__(self, **options: Any) -> None:
        try:
            super().__init__(**options)
        except ValidationError as exc:
            raise validation_error(exc, where=_SOURCE.get(), model=TrainConfig) from None

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's `true` is not a count or a rate (pydantic would read it as 1)."""
        if isinstance(value, bool) and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("lr", "input_size", mode="before")
    @classmethod
    def _auto_or_number(cls, value: Any, info: ValidationInfo) -> Any:
        """'auto', or a number checked here, so a bad value gets one message instead of one per union member."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if value is None or isinstance(value, bool):
            return value  # None: input_size's own meaning (lr rejects it below); bools: _no_bool_numbers
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if info.field_name == "lr":
            if not number > 0:
                raise ValueError("must be a positive number or 'auto'")
            return number
        if not (number == int(number) if math.isfinite(number) else False) or number < 16:
            raise ValueError("must be a whole number of pixels >= 16, 'auto' or null")
        return int(number)

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        from sightline.train.stopping import parse_duration

        if value is not None:
            try:
                parse_duration(value)
            except UserInputError:
                raise ValueError("must be a positive duration such as 300, 90s, 5m or 1h30m") from None
        return value

    @field_validator("cache_ram")
    @classmethod
    def _ram(cls, value: str) -> str:
        from sightline.train.cache import ram_budget

        value = value.strip().lower()
        if value != "off":
            try:
                ram_budget(value)
            except UserInputError:
                raise ValueError("must be auto, off, a size such as 2GB or 0, or a share such as 25%") from None
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: str) -> str:
        # a count of 0 devices is nothing to train on (Lightning's MisconfigurationException traceback)
        if not re.fullmatch(r"auto|0*[1-9]\d*|\d+(,\d+)+", value.replace(" ", "")):
            raise ValueError("must be 'auto', a count of 1 or more such as 2, or a list of GPU ids such as 0,1")
        return value

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with some fields changed, validated again; an unknown name or a bad value is a UserInputError."""
        return TrainConfig(**{**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def save_yaml(self, path: str | Path, *, comments: Sequence[str] = ()) -> None:
        """Write the config as YAML; `comments` (e.g. why each automatic choice was made) go first as # lines."""
        import yaml

        path = Path(path)  # atomic: every DDP rank may write the same file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        header = "".join(f"# {' '.join(line.split())}\n" for line in comments)
        tmp.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)


def _is_number(kind: Any) -> bool:
    """int, float, or one of them inside `Annotated[...]` / `X | None`."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is Annotated:
        return _is_number(args[0])
    return any(_is_number(a) for a in args) if args else kind in (int, float)


def load_config(path: str | Path) -> TrainConfig:
    """Read a config.yaml (e.g. RUN/config.yaml of an earlier run) into a TrainConfig; a bad file is a one-line
    UserInputError naming the file and the key."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"config '{path}' cannot be read ({exc.strerror or exc}); check the path.") from exc
    except UnicodeDecodeError:
        raise UserInputError(f"config '{path}' is not UTF-8 text; pass a YAML file (e.g. RUN/config.yaml).") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserInputError(f"config '{path}' is not valid YAML{line}; fix the syntax.") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"config '{path}' must be a mapping of option: value.")
    token = _SOURCE.set(str(path))
    try:
        return TrainConfig(**{str(k): v for k, v in data.items()})
    finally:
        _SOURCE.reset(token)
