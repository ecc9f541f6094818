"""One predictor for batch prediction, benchmarks and the server.

`OnnxPredictor` runs the bundle's `model.onnx` (or `model.int8.onnx`) in ONNX Runtime; `TorchPredictor` runs
the same bundle in PyTorch eager mode for comparison. Both share the decode -> preprocess -> infer ->
decide path, so figures from `sightline bench` describe exactly what `predict` and `serve` do.

Example:
    >>> predictor = OnnxPredictor(load_bundle("runs/demo"))
    >>> rows = predictor.predict_files(["a.jpg", "b.png"], batch_size=32)
    >>> rows[0].label, rows[0].confidence, rows[0].decision
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sightline.bundle import Bundle
from sightline.errors import BundleError, ImageError, SightlineError

__all__ = [
    "Prediction",
    "Predictor",
    "OnnxPredictor",
    "TorchPredictor",
    "create_predictor",
    "default_providers",
    "usable_cores",
    "decisions_to_predictions",
]

DEFAULT_MAX_PIXELS = 50_000_000


@dataclass
class Prediction:
    """One image's answer. `error` is set (and the rest empty) when the file could not be used."""

    filename: str
    label: str | None = None
    confidence: float | None = None
    top_k: list[dict[str, Any]] = field(default_factory=list)  # [{"label", "confidence"}], best first
    decision: str | None = None  # "accept" | "review"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decisions_to_predictions(
    logits: np.ndarray, filenames: Sequence[str], bundle: Bundle, *, top_k: int = 3
) -> list[Prediction]:
    """(N, K) logits -> N predictions, applying the bundle's temperature, class thresholds and review rule."""
    from sightline.decision import decide

    dec = decide(logits, bundle.classes, temperature=bundle.temperature, thresholds=bundle.thresholds)
    k = min(top_k, len(bundle.classes))
    order = np.argsort(-dec.probabilities, axis=1)[:, :k]
    rows = []
    for i, name in enumerate(filenames):
        rows.append(
            Prediction(
                filename=name,
                label=bundle.classes[int(dec.labels[i])],
                confidence=float(dec.confidences[i]),
                top_k=[
                    {"label": bundle.classes[int(j)], "confidence": float(dec.probabilities[i, j])} for j in order[i]
                ],
                decision="review" if bool(dec.review[i]) else "accept",
            )
        )
    return rows


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build and the machine have it, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return wanted or ["CPUExecutionProvider"]


def usable_cores() -> int:
    """Cores this process may use (respects taskset / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Predictor:
    """Shared decode -> preprocess -> infer -> decide path. Subclasses implement `predict_arrays`."""

    kind = "base"

    def __init__(self, bundle: Bundle, *, max_pixels: int = DEFAULT_MAX_PIXELS, top_k: int = 3) -> None:
        self.bundle = bundle
        self.classes = list(bundle.classes)
        self.preprocessing = bundle.preprocessing
        self.max_pixels = max_pixels
        self.top_k = top_k
        self._pool = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`[fn(x) for x in items]` on a small thread pool: Pillow decodes and resizes without the GIL, so a
        batch's images are prepared in parallel. Exceptions are returned in place, not raised."""
        def safe(x: Any) -> Any:
            try:
                return fn(x)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller, who reports it per image
                return exc

        if len(items) <= 1:
            return [safe(x) for x in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=min(8, usable_cores()), thread_name_prefix="sightline-load")
        return list(self._pool.map(safe, items))

    # --- stages -------------------------------------------------------------------------------------------
    def decode(self, source: str | Path | bytes, *, name: str | None = None):  # -> PIL.Image.Image
        """Decode one image safely; JPEGs decode at reduced size when still >= the resize size (draft mode).

        Raises NotAnImageError / ImageTooLargeError / CorruptImageError naming the file (or `name`)."""
        from sightline.data.images import load_image

        side = self.preprocessing.resize_size
        return load_image(source, max_pixels=self.max_pixels, draft=(side, side), name=name)

    def preprocess(self, image) -> np.ndarray:
        """PIL image -> (3, S, S) float32, the bundle's eval preprocessing."""
        from sightline.data.transforms import eval_preprocess

        return eval_preprocess(image, self.preprocessing)

    def load(self, source: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
        """decode + preprocess: a file path or bytes -> (3, S, S) float32."""
        return self.preprocess(self.decode(source, name=name))

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, K) float32 logits."""
        raise NotImplementedError

    def decide(self, logits: np.ndarray, filenames: Sequence[str]) -> list[Prediction]:
        return decisions_to_predictions(logits, filenames, self.bundle, top_k=self.top_k)

    # --- whole path -------------------------------------------------------------------------------------
    def predict_files(
        self,
        sources: Iterable[str | Path | bytes],
        *,
        names: Sequence[str] | None = None,
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Predict every source (path or bytes), in input order, `batch_size` images per inference call.

        A source that cannot be read yields a row with `error` set; it never stops the batch.
        `on_batch(n)` is called after each batch with the number of sources it consumed (progress bars)."""
        sources = list(sources)
        if names is None:
            names = [f"<bytes #{i}>" if isinstance(s, bytes) else str(s) for i, s in enumerate(sources)]
        rows: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            chunk_names = names[start : start + batch_size]
            arrays: list[np.ndarray] = []
            ok_names: list[str] = []
            out: list[Prediction | None] = []
            loaded = self.map(lambda pair: self.load(pair[0], name=pair[1]), list(zip(chunk, chunk_names)))
            for result, name in zip(loaded, chunk_names):
                if isinstance(result, (ImageError, OSError)):
                    out.append(Prediction(filename=name, error=f"{type(result).__name__}: {result}"))
                elif isinstance(result, BaseException):
                    raise result  # a bug, not a bad file: do not hide it in an error column
                else:
                    arrays.append(result)
                    ok_names.append(name)
                    out.append(None)
            if arrays:
                from sightline.data.transforms import stack

                decided = iter(self.decide(self.predict_arrays(stack(arrays)), ok_names))
                out = [row if row is not None else next(decided) for row in out]
            rows.extend(row for row in out if row is not None)
            if on_batch is not None:
                on_batch(len(chunk))
        return rows


class OnnxPredictor(Predictor):
    """ONNX Runtime inference of the bundle's exported model (run `sightline export` first).

    providers: ORT execution providers, default CUDA when available else CPU. threads: intra-op threads
    (default: the cores this process may use). spinning: let ORT's idle threads busy-wait for the next operator;
    fastest when inference has the cores to itself (predict, bench), wasteful when other work shares them (the
    server decodes images while it infers), so the server turns it off."""

    kind = "onnx"

    def __init__(
        self,
        bundle: Bundle,
        *,
        int8: bool = False,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        spinning: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        top_k: int = 3,
    ) -> None:
        import onnxruntime as ort

        super().__init__(bundle, max_pixels=max_pixels, top_k=top_k)
        path = bundle.int8_path if int8 else bundle.onnx_path
        if not path.is_file():
            flag = " --int8" if int8 else ""
            raise BundleError(f"{path} is missing; run `sightline export {bundle.path}{flag}` first.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT's warnings about unused initializers are noise
        self.path = path
        self.int8 = int8
        self.kind = "onnx-int8" if int8 else "onnx"
        self.session = ort.InferenceSession(str(path), options, providers=list(providers or default_providers()))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, self.preprocessing.input_size, self.preprocessing.input_size):
            s = self.preprocessing.input_size
            raise SightlineError(f"expected a (N, 3, {s}, {s}) batch, got {batch.shape}.")
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class TorchPredictor(Predictor):
    """PyTorch eager inference of the bundle's weights (fp32): the baseline for `sightline bench`."""

    kind = "torch"

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str | None = None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        top_k: int = 3,
    ) -> None:
        import torch

        super().__init__(bundle, max_pixels=max_pixels, top_k=top_k)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = bundle.load_model(self.device)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.model(x).float().cpu().numpy()


def create_predictor(bundle: Bundle, *, backend: str = "onnx", **kwargs: Any) -> Predictor:
    """backend: "onnx" (fp32 ONNX Runtime), "onnx-int8" or "torch" (eager fp32)."""
    if backend == "onnx":
        return OnnxPredictor(bundle, **kwargs)
    if backend == "onnx-int8":
        return OnnxPredictor(bundle, int8=True, **kwargs)
    if backend == "torch":
        return TorchPredictor(bundle, **kwargs)
    raise SightlineError(f"unknown backend {backend!r}; use onnx, onnx-int8 or torch.")
