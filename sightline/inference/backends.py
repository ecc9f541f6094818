"""Backends: run a batch of network inputs and return logits, pooled features and class activation maps.

`TorchBackend` runs a bundle's weights (or any timm classifier) in PyTorch; `OnnxBackend` runs the bundle's
exported `model.onnx` / `model.int8.onnx` in ONNX Runtime. Both answer `run(batch) -> Output` with the same
three arrays, from one forward pass:

- `logits` (N, K): what the classifier outputs;
- `features` (N, D): the pooled penultimate vector the classifier reads (timm's `forward_head(pre_logits=True)`);
- `cams` (N, h, w): the classic class activation map of the arg-max class, `sum_c w[k, c] * A[c]` over the last
  feature map A (Zhou et al. 2016). For a global-average-pool + linear head it equals Grad-CAM of that layer up to
  a positive factor (the gradient of logit k w.r.t. A[c, i, j] is w[k, c] / (h w)), so the served model shows
  where it looked without gradients and without PyTorch. None when the head is not pool + linear.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.errors import BundleError, SightlineError

if TYPE_CHECKING:
    import torch

__all__ = ["Output", "Backend", "TorchBackend", "OnnxBackend", "FeatureModel", "OUTPUT_NAMES", "default_device",
           "default_providers", "usable_cores"]

OUTPUT_NAMES = ("logits", "features", "cam")  # the exported graph's outputs, in this order


@dataclass
class Output:
    """One forward pass over N images. `features` is None only for an ONNX file exported before features existed;
    `cams` is None when the model's head is not pool + linear (or the ONNX file has no CAM output)."""

    logits: np.ndarray  # (N, K) float32
    features: np.ndarray | None = None  # (N, D) float32
    cams: np.ndarray | None = None  # (N, h, w) float32, raw (not rectified, not scaled)

    def __len__(self) -> int:
        return len(self.logits)

    def take(self, index: Any) -> Output:
        """Rows `index` (an int, a slice or an index array) of every array."""
        pick = (lambda a: None if a is None else a[index])
        return Output(self.logits[index], pick(self.features), pick(self.cams))

    @staticmethod
    def concat(parts: Sequence[Output], *, num_classes: int = 0) -> Output:
        """Rows of several outputs, in order (an empty list gives an empty (0, num_classes) output)."""
        if not parts:
            return Output(np.zeros((0, num_classes), dtype=np.float32))

        def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if any(a is None for a in arrays) else np.concatenate(arrays)  # type: ignore[arg-type]

        return Output(np.concatenate([p.logits for p in parts]), cat([p.features for p in parts]),
                      cat([p.cams for p in parts]))


def usable_cores() -> int:
    """Cores this process may use (respects taskset / cgroup affinity)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build and the machine have it, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return wanted or ["CPUExecutionProvider"]


def _feature_model_class():
    import torch

    class _FeatureModel(torch.nn.Module):
        """A timm classifier seen as (logits, features, cam) in one pass; what `sightline export` writes to ONNX."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model.eval()
            head = model.get_classifier() if hasattr(model, "get_classifier") else None
            self.linear = head if isinstance(head, torch.nn.Linear) and _pools_by_average(model) else None

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            fmap = self.model.forward_features(x)
            features = self.model.forward_head(fmap, pre_logits=True)
            if self.linear is None or fmap.ndim != 4:  # not pool + linear: logits from the model's own head
                return self.model.forward_head(fmap), features
            logits = self.linear(features)
            weights = self.linear.weight[logits.argmax(dim=1)]  # (N, C): the row of each image's top class
            cam = torch.einsum("nchw,nc->nhw", fmap, weights)
            return logits, features, cam

    return _FeatureModel


def _pools_by_average(model: torch.nn.Module, *, side: int = 64) -> bool:
    """Whether the model's pre-logits features are the plain spatial mean of its last feature map (global average
    pool, nothing after it): only then is the classic CAM Grad-CAM's map. ConvNeXt, for one, normalises after the
    pool. Checked on one random input of `side` px; a model that cannot run at that size counts as not."""
    import torch

    try:
        with torch.no_grad():
            fmap = model.forward_features(torch.randn(1, 3, side, side, device=next(model.parameters()).device))
            features = model.forward_head(fmap, pre_logits=True)
    except Exception:  # noqa: BLE001 - e.g. a ViT with a fixed input size: no CAM, which is the safe answer
        return False
    if fmap.ndim != 4 or features.shape != fmap.shape[:2]:
        return False
    mean = fmap.float().mean(dim=(2, 3))
    return bool(torch.allclose(features.float(), mean, atol=1e-4 * max(1.0, float(mean.abs().max()))))


def FeatureModel(model: torch.nn.Module) -> torch.nn.Module:  # noqa: N802 - a class built lazily (no torch import)
    """Wrap a timm classifier (eval mode) so it returns (logits, features[, cam]); see the module docstring."""
    return _feature_model_class()(model).eval()


class Backend:
    """Runs (N, 3, S, S) float32 network inputs. Subclasses implement `run`; `close` releases threads/sessions."""

    kind = "base"

    def run(self, batch: np.ndarray) -> Output:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds; safe to call twice."""

    @property
    def feature_dim(self) -> int | None:
        """D of the (N, D) features `run` returns, when known before a batch has run."""
        return None


class TorchBackend(Backend):
    """PyTorch inference of an nn.Module in eval mode, channels-last (measured on 2 CPU cores with Lite0 at 224 px:
    24-29 ms per image instead of 41-48 ms; convolution libraries prefer NHWC on CUDA too). fp32."""

    kind = "torch"

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device | None = None,
                 threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.wrapped = FeatureModel(self.model)

    def run(self, batch: np.ndarray) -> Output:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            out = self.wrapped(x)
        arrays = [t.float().cpu().numpy() for t in out]
        return Output(arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None)

    def close(self) -> None:
        self.model = self.wrapped = None  # type: ignore[assignment]


class OnnxBackend(Backend):
    """ONNX Runtime inference of an exported graph.

    providers: ORT execution providers, default CUDA when available else CPU. threads: intra-op threads (default:
    the cores this process may use). spinning: let ORT's idle threads busy-wait for the next operator; fastest
    when inference has the cores to itself (predict, bench), wasteful when other work shares them (the server
    decodes images while it infers), so the server turns it off. A graph exported before features existed (one
    output) still runs: `features` and `cams` are then None (`require_features` says how to add them)."""

    kind = "onnx"

    def __init__(self, path: str | Path, *, input_size: int, providers: Sequence[str] | None = None,
                 threads: int | None = None, spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT's warnings about unused initializers are noise
        self.path = Path(path)
        self.input_size = input_size
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers or default_providers()))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"{path} cannot be loaded by ONNX Runtime ({str(exc).splitlines()[0][:200]}); "
                              "run `sightline export` again.") from exc
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.outputs = [n for n in OUTPUT_NAMES if n in names] if "features" in names else names[:1]

    @property
    def has_features(self) -> bool:
        return "features" in self.outputs

    @property
    def feature_dim(self) -> int | None:
        """D of the (N, D) features output as the graph states it (None without features or a stated width)."""
        shape = next((o.shape for o in self.session.get_outputs() if o.name == "features"), None)
        return shape[1] if shape is not None and len(shape) == 2 and isinstance(shape[1], int) else None

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, batch: np.ndarray) -> Output:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise SightlineError(f"expected a (N, 3, {s}, {s}) batch, got {batch.shape}.")
        got = dict(zip(self.outputs, self.session.run(self.outputs, {self.input_name: batch})))
        return Output(got[self.outputs[0]], got.get("features"), got.get("cam"))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
