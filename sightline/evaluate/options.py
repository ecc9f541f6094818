"""`EvaluateOptions`: what `evaluate` does besides which run and which data, as one validated model.

`evaluate(run, data, n_bootstrap=200)` and `evaluate(run, data, EvaluateOptions(n_bootstrap=200))` are the same
call; a wrong name or value is one line naming it (`evaluate options: n_boostrap is an unknown key; did you mean
'n_bootstrap'?`), raised before any work.

Example:
    >>> quick = EvaluateOptions(n_bootstrap=100, robustness=False)
    >>> evaluate("runs/demo", "data/parts", quick, split="val")        # keywords override the model's fields
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sightline.errors import UserInputError, validation_error
from sightline.spec import ProblemSpec

__all__ = ["EvaluateOptions", "resolve_options"]

Severity = Annotated[int, Field(ge=1, le=5)]


class EvaluateOptions(BaseModel):
    """Settings of one evaluation (see `sightline.evaluate.run.evaluate`). Frozen: derive variants with
    `model_copy(update=...)` or `resolve_options`."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    split: Literal["train", "val", "test"] = "test"  # the split reported on; temperature and thresholds come from val
    out: Path | None = None  # folder for metrics.json and report.html (default RUN/eval)
    spec: Path | ProblemSpec | None = None  # problem definition (default DATA/sightline.yaml when there is one)
    method: str = "gradcam"  # heatmap method, a name of sightline.explain.cam.CAM_METHODS
    n_bootstrap: int = Field(1000, ge=1)  # bootstrap resamples behind every 95 % interval
    gallery_per_group: int = Field(3, ge=0)  # gallery images per true class and group (correct, wrong, low conf.)
    max_region_images: int = Field(300, ge=0)  # images scored against ground-truth regions (a seeded sample)
    robustness: bool = True  # run the corruption suite
    robustness_images: int = Field(100, ge=1)  # images in the corruption suite (a seeded sample of the split)
    severities: tuple[Severity, ...] = (1, 3, 5)  # corruption severities, 1 (mild) .. 5
    batch_size: int = Field(64, ge=1)  # images per forward pass
    device: str | None = None  # "cpu", "cuda", "cuda:1"; default CUDA when available
    update_bundle: bool = True  # write the val-fitted temperature and thresholds (and the metrics) into the bundle
    report: bool = True  # write report.html (and MODEL_CARD.md into the bundle when update_bundle)
    seed: int = 0  # bootstrap, region sample, robustness sample and corruptions
    reference: bool = True  # refresh the monitor's reference profile (bundle/reference.npz) from val, with
    # update_bundle; from evaluate's own val pass, reusing the bank and stand-in outputs stored with the profile when
    # they came from the same model, else scoring up to 5,000 train images and ~300 stand-in outliers again
    ood: Path | None = None  # a folder of images unlike the classes: every open-set score's figures on them

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:  # one line naming the field, as for every other input
            raise validation_error(exc, where="evaluate options", model=EvaluateOptions) from None

    @field_validator("spec", mode="before")
    @classmethod
    def _spec_path_or_model(cls, value: Any) -> Any:
        if value is None or isinstance(value, (str, Path, ProblemSpec)):
            return value
        raise ValueError("must be the path of a sightline.yaml or a ProblemSpec")

    @field_validator("ood")
    @classmethod
    def _ood_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError("must be an existing folder of images unlike the model's classes")
        return value

    @field_validator("severities")
    @classmethod
    def _some_severity(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("must name at least one severity, 1..5")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from sightline.explain.cam import CAM_METHODS, method_key

        if method_key(value) is None:
            raise ValueError(f"must be one of {', '.join(CAM_METHODS)}")
        return value


def resolve_options(options: EvaluateOptions | None = None, **settings: Any) -> EvaluateOptions:
    """`options` (default: the defaults) with `settings` (EvaluateOptions field names) laid over it, validated;
    UserInputError naming the field, the value and what it must be otherwise."""
    if options is not None and not isinstance(options, EvaluateOptions):
        raise UserInputError(f"evaluate options must be an EvaluateOptions, not {type(options).__name__}; pass "
                             "the settings as keywords or build EvaluateOptions(...).")
    if not settings:
        return options or EvaluateOptions()
    base = {name: getattr(options, name) for name in EvaluateOptions.model_fields} if options else {}
    return EvaluateOptions(**{**base, **settings})
