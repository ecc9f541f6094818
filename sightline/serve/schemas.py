"""Request and response bodies of the HTTP API (DESIGN.md, "HTTP API (v1)")."""
from __future__ import annotations

from datetime import datetime
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, Field, model_serializer

__all__ = [
    "ModelRef",
    "TopK",
    "PredictionOut",
    "PredictResponse",
    "ModelInfo",
    "ErrorResponse",
    "ReviewItem",
    "ReviewLabel",
    "Health",
    "MonitorStatus",
    "PREDICTION_ID_MAX",
    "PredictionId",
    "shown_label",
    "known_label",
]

# The largest id a prediction row can have: the id column is an Integer, 32-bit on PostgreSQL (SQLite's is 64-bit,
# but the same service runs on both). A larger id in a URL or a body is refused as input (422) instead of
# overflowing in the database driver (a 500: above 2**63 - 1 on both, above 2**31 - 1 on PostgreSQL).
PREDICTION_ID_MAX = 2**31 - 1
PredictionId = Annotated[int, Path(ge=1, le=PREDICTION_ID_MAX, description="A prediction's id, as /v1/predict answered it.")]


def shown_label(label: str, limit: int = 64) -> str:
    """A client's label as an error message quotes it: its first `limit` characters (a 100,000-character label came
    back whole in the one-line answer)."""
    return repr(label) if len(label) <= limit else f"{label[:limit]!r}... ({len(label):,} characters)"


def known_label(label: str, allowed: Sequence[str]) -> str | None:
    """The one of `allowed` (the model's classes and 'unknown') that a client's `label` names, as `allowed` spells
    it; None when none does. Compared in Unicode NFC: a label typed on some keyboards or read from a macOS folder
    name comes decomposed ('café' as 'cafe' + U+0301), was refused, and the refusal quoted it and the class alike."""
    if label in allowed:
        return label
    import unicodedata

    wanted = unicodedata.normalize("NFC", label)
    return next((a for a in allowed if unicodedata.normalize("NFC", a) == wanted), None)


class ModelRef(BaseModel):
    name: str
    version: str
    registry_version: str | None = Field(
        None, description='Registry version that produced the answer ("v3"); absent when serving a bundle folder.'
    )
    bundle_hash: str | None = Field(None, description="Content hash of that registry version; absent without one.")

    @model_serializer(mode="wrap")
    def _drop_unset_registry(self, handler: Any):  # no return type: the JSON schema stays the fields
        """Serving a bundle folder answers exactly {name, version}, as before the registry existed."""
        data = handler(self)
        for name in ("registry_version", "bundle_hash"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class TopK(BaseModel):
    label: str
    confidence: float = Field(description="Calibrated probability, 0..1.")


class PredictionOut(BaseModel):
    filename: str
    label: str
    confidence: float = Field(description="Calibrated probability of `label`, 0..1.")
    top_k: list[TopK]
    decision: Literal["accept", "review", "unknown"] = Field(
        description='"review": below the bundle\'s review confidence; "unknown": the open-set score says the image '
        "is unlike the training data (wins over review; needs the bundle's reference profile)."
    )
    id: int | None = Field(None, description="Row id in the prediction store (for review).")
    ood_score: float | None = Field(
        None, description="Open-set score of the profile's chosen method (higher = less like the training data); "
        "null when the bundle has no reference profile or monitoring is off."
    )


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[PredictionOut]
    inference_ms: float = Field(description="Server time for the whole request, decode to answer, ms.")


class ModelInfo(BaseModel):
    name: str
    version: str
    architecture: str
    classes: list[str]
    preprocessing: dict[str, Any]
    temperature: float
    thresholds: dict[str, Any]
    metrics: dict[str, Any]
    dataset_version: str | None
    code_version: str | None
    created: str
    runtime: dict[str, Any] = Field(description="onnx or onnx-int8, execution providers, batching settings.")
    registry: dict[str, Any] | None = Field(
        None, description="With `serve --registry`: alias, registry version, bundle hash, stored_as (the model_version "
        "written with each prediction) and swaps (model switches since start)."
    )


class ErrorResponse(BaseModel):
    detail: str


class ReviewItem(BaseModel):
    id: int
    created: datetime
    filename: str
    input_sha256: str
    label: str
    confidence: float
    top_k: list[TopK]
    decision: str
    model_version: str
    reviewed_label: str | None = None
    reviewer: str | None = None


class ReviewLabel(BaseModel):
    label: str = Field(description="The true class, one of the model's classes, or 'unknown' (not a valid item).")
    override: bool = Field(False, description="Replace an existing label (kept in the label history); else 409.")


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)
    model: ModelRef | None = Field(None, description="The model serving now (readiness only).")


class MonitorStatus(BaseModel):
    enabled: bool = Field(description="False without a reference profile or with SIGHTLINE_MONITOR=false.")
    message: str | None = Field(None, description="Why monitoring is off, and how to turn it on.")
    profile: dict[str, Any] | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    windows: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Latest window of each kind (recent, block, hour, day): drift tests with "
        "p-values, unknown rate, mean confidence, expected accuracy."
    )
    alerts: list[dict[str, Any]] = Field(default_factory=list)
    open_alerts: list[str] = Field(default_factory=list, description="Names of the alerts raised now.")
