"""The only module that imports timm. `create_model` builds a classifier; `default_preprocessing` gives the input
settings that travel with the model's pretrained weights (timm's `pretrained_cfg`). Where weights come from is
decided in sightline.models.pretrained.

Example:
    >>> model = create_model("tf_efficientnet_lite0", num_classes=2, weights="auto")   # offline ImageNet weights
    >>> pre = default_preprocessing("tf_efficientnet_lite0")   # 224 px, mean/std 0.5, bicubic, crop 0.875
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sightline.preprocessing import Preprocessing
from sightline.errors import ModelError
from sightline.models import pretrained

if TYPE_CHECKING:
    import torch

__all__ = ["create_model", "default_preprocessing", "resolve_model_name", "BUNDLED_MODELS", "DEFAULT_MODEL"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tf_efficientnet_lite0"
# Architectures whose ImageNet weights ship in an installed package: usable with no network at all.
BUNDLED_MODELS = tuple(pretrained.PACKAGED)
# Short names accepted on the command line (`--models lite0,lite1`).
ALIASES = {f"lite{i}": f"tf_efficientnet_lite{i}" for i in range(3)} | {
    f"efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in range(3)
}


def resolve_model_name(name: str) -> str:
    """The timm architecture for `name` (aliases such as 'lite0' resolved). Unknown -> ModelError with close names."""
    import timm

    name = ALIASES.get(name.strip(), name.strip())
    if timm.is_model(name):
        return name
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    close += [n for n in names if name and name in n and n not in close][: 5 - len(close)]
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names timm knows."
    raise ModelError(f"unknown model '{name}'; {hint} (bundled offline: {', '.join(BUNDLED_MODELS)})")


def create_model(
    name: str,
    num_classes: int,
    *,
    weights: str | Path = "none",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> torch.nn.Module:
    """A timm classifier for `num_classes` classes: input (N, 3, S, S) normalised images, output (N, K) logits.

    weights:
      - "none": random initialisation;
      - "auto": ImageNet weights that ship in an installed package (Lite0/1/2), else timm's hub when
        huggingface.co is reachable, else ModelError saying how to get weights;
      - a path to a .safetensors / .pth / .pt state dict of this architecture (a head trained for another number
        of classes is re-initialised with a note; any other mismatch is a ModelError naming it).
    drop_rate: dropout before the classifier; drop_path_rate: stochastic depth in the blocks.
    The model carries `sightline_weights = {"source": str, "notes": [str]}` saying what was loaded.
    """
    import timm

    name = resolve_model_name(name)
    if num_classes < 1:
        raise ModelError(f"num_classes={num_classes}; a classifier needs at least one output.")
    kwargs = {"num_classes": num_classes, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    weights_arg = str(weights)
    notes: list[str] = []

    if weights_arg == "none":
        model = timm.create_model(name, pretrained=False, **kwargs)
        source = "none (random initialisation)"
    elif weights_arg == "auto":
        packaged = pretrained.packaged_weights_path(name)
        if packaged is not None:
            model = timm.create_model(name, pretrained=False, **kwargs)
            state = pretrained.read_state_dict(packaged)
            source = f"package {pretrained.PACKAGED[name][0]} ({packaged.name})"
            notes = pretrained.fit_state_dict(
                model, state, classifier=_classifier_name(model), by_position=True, source=source
            )
        elif pretrained.hub_reachable():
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:  # hub errors come as HTTPError, OSError, RuntimeError...
                raise ModelError(f"downloading weights for '{name}' from the hub failed ({exc}); "
                                 + pretrained.no_weights_message(name)) from exc
            source = f"timm hub ({model.pretrained_cfg.get('hf_hub_id') or name})"
        else:
            raise ModelError(pretrained.no_weights_message(name))
    else:
        path = Path(weights_arg).expanduser()
        if not path.is_file():
            raise ModelError(f"weights='{weights_arg}' is neither 'auto', 'none' nor an existing file; "
                             "pass a .safetensors/.pth file.")
        model = timm.create_model(name, pretrained=False, **kwargs)
        source = f"file {path}"
        notes = pretrained.fit_state_dict(
            model, pretrained.read_state_dict(path), classifier=_classifier_name(model), source=source
        )
    model.sightline_weights = {"source": source, "notes": notes}
    return model


def _classifier_name(model: torch.nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier", "classifier")
    return classifier[0] if isinstance(classifier, (list, tuple)) else str(classifier)


def default_preprocessing(name: str, *, input_size: int | None = None, crop_pct: float | None = None) -> Preprocessing:
    """Input settings from timm's pretrained config of `name`: size, mean, std, interpolation, crop_pct.

    input_size overrides the side of the square input (pixels), e.g. 64 for quick runs; crop_pct the share the
    center crop keeps; the rest stays."""
    from timm.models import get_pretrained_cfg

    name = resolve_model_name(name)
    cfg = get_pretrained_cfg(name)
    if cfg is None:  # a registered model without a pretrained config: timm's ImageNet defaults
        return Preprocessing(input_size=input_size or 224, **({"crop_pct": crop_pct} if crop_pct else {}))
    size = input_size if input_size is not None else int(cfg.input_size[-1])
    interpolation = cfg.interpolation if cfg.interpolation in ("nearest", "bilinear", "bicubic", "lanczos") \
        else "bicubic"
    return Preprocessing(
        input_size=int(size),
        mean=tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
        interpolation=interpolation,
        crop_pct=float(crop_pct if crop_pct is not None else cfg.crop_pct),
    )
