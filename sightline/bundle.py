"""The bundle: the unit of deployment and of the model registry (DESIGN.md, "Runs and bundles").

A bundle folder holds `model.json` (everything a later stage needs to use the weights: architecture, class
names, preprocessing, temperature, thresholds, metrics, provenance), `weights.safetensors`, and after export
`model.onnx` / `model.int8.onnx`. Every stage after training reads preprocessing and class names from here and
never declares them again.

Example:
    >>> bundle = load_bundle("runs/demo")          # a RUN folder or its bundle/ folder
    >>> model = bundle.load_model()                # nn.Module in eval mode with the trained weights
    >>> bundle.classes, bundle.preprocessing.input_size
"""
from __future__ import annotations

import json
import math
import os
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sightline.errors import BundleError
from sightline.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

__all__ = ["Preprocessing", "Bundle", "load_bundle", "resolve_bundle_dir", "is_registry_copy", "code_version",
           "FORMAT_VERSION"]

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"


@dataclass
class Bundle:
    """Metadata of a trained model plus the folder it lives in. `model.json` is `to_dict()` as JSON."""

    architecture: str  # timm model name, e.g. "tf_efficientnet_lite0"
    classes: list[str]  # class names, index = output unit
    preprocessing: Preprocessing
    name: str = "sightline-model"
    version: str = "1"
    temperature: float = 1.0  # logits are divided by this before softmax (fitted on validation)
    # Decision thresholds chosen on validation (see sightline.decision): {"review_confidence": float | None,
    # "class_thresholds": {class: min probability}, ...provenance}
    thresholds: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # each entry names its split and n_images
    dataset_version: str | None = None  # hash of the training dataset's manifest
    code_version: str | None = None  # sightline version + git commit
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific: training config, export parity, ...
    path: Path | None = None  # the folder, once saved or loaded

    # --- files -----------------------------------------------------------------------------------------
    @property
    def weights_path(self) -> Path:
        return self._require_path() / WEIGHTS

    @property
    def onnx_path(self) -> Path:
        return self._require_path() / ONNX

    @property
    def int8_path(self) -> Path:
        return self._require_path() / ONNX_INT8

    def _require_path(self) -> Path:
        if self.path is None:
            raise BundleError("this bundle has not been saved yet; call bundle.save(folder) first.")
        return self.path

    # --- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data["preprocessing"] = self.preprocessing.to_dict()
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> Bundle:
        where = f"{path / MODEL_JSON}" if path else MODEL_JSON
        for key in ("architecture", "classes", "preprocessing"):
            if key not in data:
                raise BundleError(f"{where} has no '{key}'; it was not written by sightline or is damaged.")
        if not isinstance(data["classes"], list) or len(data["classes"]) < 2:
            raise BundleError(f"{where}: 'classes' must list at least two class names.")
        for key in ("architecture", "name", "version"):  # every answer, row and registry entry names them as text
            value = data.get(key, "text")
            if not isinstance(value, str) or not value.strip():
                raise BundleError(f"{where}: {key}={value!r} must be non-empty text (in quotes, e.g. \"{key}\": "
                                  f"\"3\"); edit model.json or export the bundle again.")
        classes = [str(c) for c in data["classes"]]
        if len(set(classes)) != len(classes):  # two outputs under one name: every decision about it is ambiguous
            twice = sorted({c for c in classes if classes.count(c) > 1})
            raise BundleError(f"{where}: 'classes' lists {', '.join(map(repr, twice))} more than once; each output "
                              "needs its own name. Copy the bundle folder again from the run, or train again.")
        temperature = data.get("temperature", 1.0)  # logits / 0 or NaN: NaN confidences; below 0: inverted ranks
        number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not (number and 0 < temperature < math.inf):
            raise BundleError(f"{where}: temperature={temperature!r} must be a positive number; set it to 1.0 "
                              "(uncalibrated) and run `sightline evaluate` to fit it, or copy the bundle folder again.")
        if not isinstance(data.get("thresholds", {}), dict):
            raise BundleError(f"{where}: 'thresholds' must be a JSON object; set it to {{}} and run `sightline "
                              "evaluate` to choose them, or copy the bundle folder again.")
        _check_thresholds(data.get("thresholds", {}), classes, where)
        known = {f for f in cls.__dataclass_fields__ if f != "path"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
        kwargs["classes"] = classes
        return cls(**kwargs, path=path)

    def save(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write model.json (and weights.safetensors when `state_dict` is given) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if state_dict is not None:
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
            save_file(tensors, str(folder / WEIGHTS), metadata={"architecture": self.architecture})
        self.path = folder
        self.write_json()
        if state_dict is not None:
            # safetensors writes its file readable by its owner only (0600); the bundle's other files follow the
            # umask. Given model.json's mode, a service or reviewer running as another user can read the weights.
            os.chmod(folder / WEIGHTS, stat.S_IMODE((folder / MODEL_JSON).stat().st_mode))
        return folder

    def write_json(self) -> None:
        """Rewrite model.json after a later stage added metrics, thresholds or export details."""
        path = self._require_path() / MODEL_JSON
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        tmp.replace(path)

    # --- model -------------------------------------------------------------------------------------------
    def load_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained network in eval mode, weights from weights.safetensors. Outputs logits (N, K)."""
        from sightline.errors import ModelError
        from sightline.models.factory import create_model
        from sightline.models.pretrained import read_state_dict

        if not self.weights_path.is_file():
            raise BundleError(f"{self.weights_path} is missing; train again or copy the whole bundle folder.")
        model = create_model(self.architecture, num_classes=len(self.classes), weights="none")
        try:
            state = read_state_dict(self.weights_path)
        except ModelError as exc:
            raise BundleError(f"{exc} Copy the bundle again or re-train.") from None
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise BundleError(f"{self.weights_path} does not fit {self.architecture} with {len(self.classes)} "
                              f"classes: {first}") from exc
        if missing or unexpected:
            raise BundleError(
                f"{self.weights_path} does not fit {self.architecture} with {len(self.classes)} classes "
                f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)."
            )
        return model.to(device).eval()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to model.json")


def resolve_bundle_dir(path: str | Path) -> Path:
    """Accept a bundle folder, a RUN folder (uses RUN/bundle) or a model.json path."""
    path = Path(path)
    if path.is_file() and path.name == MODEL_JSON:
        path = path.parent
    if not path.exists():
        raise BundleError(f"'{path}' does not exist; pass a RUN folder or its bundle/ folder.")
    if (path / MODEL_JSON).is_file():
        return path
    if (path / "bundle" / MODEL_JSON).is_file():
        return path / "bundle"
    raise BundleError(f"'{path}' holds no {MODEL_JSON} (nor bundle/{MODEL_JSON}); pass a RUN or bundle folder.")


def is_registry_copy(folder: str | Path) -> bool:
    """Whether `folder` is a registry's copy of a version (sightline.loop.registry keeps each at ROOT/<bundle hash>/):
    a folder named by 64 hex characters holding a model.json. Such a copy must stay as it was added (its hash is
    checked before it is served or promoted), so commands that write into a bundle (evaluate, export) refuse it.
    Nothing is hashed: a copy already changed is one too."""
    folder = Path(folder)
    name = folder.name
    return (len(name) == 64 and all(ch in "0123456789abcdef" for ch in name)
            and (folder / MODEL_JSON).is_file())


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle from a bundle folder or a RUN folder. Raises BundleError with what to do on bad input."""
    folder = resolve_bundle_dir(path)
    try:
        data = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON, or bytes that are not UTF-8 text
        raise BundleError(f"{folder / MODEL_JSON} cannot be read ({exc}); copy the bundle folder again from the run, "
                          "or train again.") from None
    if not isinstance(data, dict):
        raise BundleError(f"{folder / MODEL_JSON} is not a JSON object; copy the bundle folder again from the run, "
                          "or train again.")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{folder / MODEL_JSON}: format_version={version!r} must be a whole number.")
    if version > FORMAT_VERSION:
        raise BundleError(f"{folder / MODEL_JSON} is from a newer sightline; upgrade sightline to read it.")
    return Bundle.from_dict(data, path=folder)


def code_version() -> str:
    """sightline's version, plus the git commit when the package runs from a git checkout."""
    from sightline import __version__

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return __version__
    commit = out.stdout.strip()
    return f"{__version__}+g{commit}" if out.returncode == 0 and commit else __version__


def _check_thresholds(thresholds: dict[str, Any], classes: list[str], where: str) -> None:
    """A review confidence or class threshold is a probability: 1.5 (a typo of 0.15?) sent every answer to review,
    and a class threshold above 1 or of a class the model does not have could never apply, all without a word."""
    def probability(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1

    review = thresholds.get("review_confidence")
    if review is not None and not probability(review):
        raise BundleError(f"{where}: thresholds.review_confidence={review!r} must be a probability from 0 to 1 (or "
                          "null: no review); edit model.json or run `sightline evaluate` to choose it.")
    per_class = thresholds.get("class_thresholds")
    per_class = {} if per_class is None else per_class
    if not isinstance(per_class, dict):
        raise BundleError(f"{where}: thresholds.class_thresholds must be a JSON object of class: probability.")
    for name, value in per_class.items():
        if name not in classes or not (value is None or probability(value)):
            raise BundleError(f"{where}: thresholds.class_thresholds[{str(name)[:64]!r}]={value!r}: each key must be "
                              "one of the classes and each value a probability from 0 to 1; edit model.json "
                              "or run `sightline evaluate` to choose them.")
