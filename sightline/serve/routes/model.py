"""Metadata of the served bundle."""
from __future__ import annotations

from fastapi import APIRouter

from sightline.serve.deps import StateDep
from sightline.serve.schemas import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo)
async def model_info(state: StateDep) -> ModelInfo:
    """The model serving now: name, version, classes, preprocessing, calibration, thresholds and metrics; with
    `serve --registry` also the registry version and content hash."""
    served = state.served
    b = served.bundle
    s = state.settings
    registry = None
    if served.registry_version is not None:
        registry = {"alias": s.alias, "version": served.registry_version, "bundle_hash": served.bundle_hash,
                    "stored_as": served.stored_version, "swaps": state.watcher.swaps if state.watcher else 0}
    return ModelInfo(
        name=b.name,
        version=b.version,
        architecture=b.architecture,
        classes=b.classes,
        preprocessing=b.preprocessing.to_dict(),
        temperature=b.temperature,
        thresholds=b.thresholds,
        metrics=b.metrics,
        dataset_version=b.dataset_version,
        code_version=b.code_version,
        created=b.created,
        runtime={
            "backend": served.engine.kind,
            "providers": served.engine.backend.providers,
            "batch_max_size": s.batch_max_size,
            "batch_max_wait_ms": s.batch_max_wait_ms,
            "max_images_per_request": s.max_images_per_request,
            "max_body_bytes": s.max_body_bytes,
            "max_pixels": s.max_pixels,
        },
        registry=registry,
    )
