"""The inference core (DESIGN.md, "Inference core"): decode -> preprocess -> run -> (logits, features, CAM) ->
decide, with a PyTorch and an ONNX Runtime backend behind one interface. Every stage that runs a model on images
goes through here.

Example:
    >>> from sightline.inference import open_engine, score_files
    >>> with open_engine(bundle, backend="onnx") as engine:
    ...     rows = engine.predict_files(paths, keep_outputs=True)
    ...     rows[0].output.features.shape            # (1, D) pooled penultimate features
"""
from sightline.inference.backends import (
    OUTPUT_NAMES,
    Backend,
    FeatureModel,
    OnnxBackend,
    Output,
    TorchBackend,
    default_device,
    default_providers,
    usable_cores,
)
from sightline.inference.cams import scale_cams
from sightline.inference.engine import (
    BACKENDS,
    Engine,
    Inputs,
    Prediction,
    iter_crops,
    load_crops,
    open_engine,
    score_files,
)
from sightline.inference.timing import Timing, time_calls

__all__ = [
    "BACKENDS", "OUTPUT_NAMES", "Backend", "Engine", "FeatureModel", "Inputs", "OnnxBackend", "Output", "Prediction",
    "TorchBackend", "Timing", "default_device", "default_providers", "iter_crops", "load_crops", "open_engine",
    "scale_cams", "score_files", "time_calls", "usable_cores",
]
