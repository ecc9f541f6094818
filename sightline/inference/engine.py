"""The one inference path: decode -> preprocess -> run -> decide, for every stage.

`Engine` joins a bundle (preprocessing, classes, temperature, thresholds) with a backend (PyTorch or ONNX
Runtime). `predict`, `serve`, `bench`, `evaluate`, `explain`, `export`'s parity check, int8 calibration, `distill`
and the monitor all call it; nothing else decodes or preprocesses for inference. Decoding is
`sightline.data.transforms.load_crop` (JPEG draft mode at no less than the resize size), so every figure
describes what the server serves.

Example:
    >>> with open_engine(load_bundle("runs/demo"), backend="onnx-int8") as engine:
    ...     rows = engine.predict_files(["a.jpg", "b.png"])
    ...     out, inputs = score_files([engine], paths)       # logits + features + CAMs of a whole folder
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.data.crops import Inputs, iter_crops, load_crops
from sightline.errors import BundleError, ImageError, SightlineError
from sightline.inference.backends import Backend, OnnxBackend, Output, TorchBackend, usable_cores
from sightline.preprocessing import Preprocessing
from sightline.progress import ProgressFn, Steps

if TYPE_CHECKING:
    import torch

    from sightline.bundle import Bundle

__all__ = ["Engine", "Prediction", "Inputs", "open_engine", "score_files", "load_crops", "iter_crops", "BACKENDS"]

BACKENDS = ("torch", "onnx", "onnx-int8")


@dataclass
class Prediction:
    """One image's answer. `error` is set (and the rest empty) when the file could not be used. `output` holds the
    image's row of the forward pass (logits, features, CAM) when the caller asked to keep it; not serialised."""

    filename: str
    label: str | None = None
    confidence: float | None = None
    top_k: list[dict[str, Any]] = field(default_factory=list)  # [{"label", "confidence"}], best first
    decision: str | None = None  # "accept" | "review"
    error: str | None = None
    output: Output | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "label": self.label, "confidence": self.confidence,
                "top_k": self.top_k, "decision": self.decision, "error": self.error}


class Engine:
    """A bundle's preprocessing and decisions around a backend. Use as a context manager (or call `close`):
    the decode thread pool and the backend's session are released at the end.

    Without a bundle (`bundle=None`: a pretrained backbone, a teacher in training) `preprocessing` and
    `classes` must be given, and decisions use temperature 1 and no thresholds."""

    def __init__(
        self,
        backend: Backend,
        *,
        bundle: Bundle | None = None,
        preprocessing: Preprocessing | None = None,
        classes: Sequence[str] | None = None,
        max_pixels: int | None = None,
        top_k: int = 3,
        workers: int | None = None,
    ) -> None:
        if bundle is None and preprocessing is None:
            raise ValueError("give a bundle or a preprocessing")
        self.backend = backend
        self.bundle = bundle
        self.preprocessing = preprocessing or bundle.preprocessing  # type: ignore[union-attr]
        self.classes = list(classes if classes is not None else (bundle.classes if bundle else []))
        self.max_pixels = max_pixels
        self.top_k = top_k
        self.workers = workers or min(8, usable_cores())
        self._pool = None

    @property
    def kind(self) -> str:
        return self.backend.kind

    # --- stages -------------------------------------------------------------------------------------------
    def decode(self, source: str | Path | bytes, *, name: str | None = None):  # -> PIL.Image.Image
        """Decode one file or upload (JPEG draft mode). Raises ImageError subclasses (NotAnImageError,
        ImageTooLargeError, CorruptImageError) naming the file (or `name`)."""
        from sightline.data.transforms import decode_for

        return decode_for(source, self.preprocessing, max_pixels=self.max_pixels, name=name)

    def crop(self, image) -> np.ndarray:
        """A decoded RGB image -> (S, S, 3) uint8 after resize + center crop."""
        from sightline.data.transforms import resize_center_crop

        return np.asarray(resize_center_crop(image, self.preprocessing), dtype=np.uint8)

    def load(self, source: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
        """`decode` + `crop`: (S, S, 3) uint8 (sightline.data.transforms.load_crop, the one decode path)."""
        from sightline.data.transforms import load_crop

        return load_crop(source, self.preprocessing, max_pixels=self.max_pixels, name=name)

    def prepare(self, source: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
        """`load` then normalise: (3, S, S) float32, one network input (the server's decode threads)."""
        return self.normalize(self.load(source, name=name))

    def normalize(self, crop: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 -> (3, S, S) float32 with the bundle's mean/std."""
        from sightline.data.transforms import normalize

        return normalize(crop, self.preprocessing)

    def to_batch(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, 3, S, S) float32."""
        from sightline.data.transforms import to_batch

        return to_batch(crops, self.preprocessing)

    def run(self, batch: np.ndarray) -> Output:
        """(N, 3, S, S) float32 network inputs -> logits, features, CAMs."""
        return self.backend.run(batch)

    def run_crops(self, crops: np.ndarray, *, batch_size: int = 64, progress: ProgressFn | None = None,
                  task: str = "inference") -> Output:
        """(N, S, S, 3) uint8 crops -> Output of N rows, `batch_size` images per forward pass (each batch is
        normalised just before its pass, so N float inputs are never held at once)."""
        parts: list[Output] = []
        with Steps(progress, task, len(crops)) as steps:
            for start in range(0, len(crops), batch_size):
                chunk = crops[start : start + batch_size]
                parts.append(self.run(self.to_batch(chunk)))
                steps.advance(len(chunk))
        return Output.concat(parts, num_classes=len(self.classes))

    def decide(self, output: Output | np.ndarray, filenames: Sequence[str], *, keep: bool = False) -> list[Prediction]:
        """N rows -> N predictions, with the bundle's temperature, class thresholds and review rule."""
        from sightline.decision import decide

        out = output if isinstance(output, Output) else Output(np.asarray(output))
        temperature = self.bundle.temperature if self.bundle else 1.0
        thresholds = self.bundle.thresholds if self.bundle else {}
        dec = decide(out.logits, self.classes, temperature=temperature, thresholds=thresholds)
        k = min(self.top_k, len(self.classes))
        order = np.argsort(-dec.probabilities, axis=1)[:, :k]
        rows = []
        for i, name in enumerate(filenames):
            rows.append(Prediction(
                filename=name,
                label=self.classes[int(dec.labels[i])],
                confidence=float(dec.confidences[i]),
                top_k=[{"label": self.classes[int(j)], "confidence": float(dec.probabilities[i, j])}
                       for j in order[i]],
                decision="review" if bool(dec.review[i]) else "accept",
                output=out.take(slice(i, i + 1)) if keep else None,
            ))
        return rows

    def require_features(self) -> None:
        """Raise a one-line BundleError when the backend cannot give features (an ONNX file from before them)."""
        if isinstance(self.backend, OnnxBackend) and not self.backend.has_features:
            where = self.bundle.path if self.bundle is not None else self.backend.path.parent
            raise BundleError(f"{self.backend.path} has no 'features' output (exported by an older sightline); "
                              f"run `sightline export {where}` again.")

    # --- threads --------------------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`[fn(x) for x in items]` on the engine's thread pool (Pillow decodes and resizes without the GIL).
        Exceptions are returned in place, not raised."""
        def safe(x: Any) -> Any:
            try:
                return fn(x)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller, who reports it per image
                return exc

        if len(items) <= 1 or self.workers <= 1:
            return [safe(x) for x in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sightline-load")
        return list(self._pool.map(safe, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- whole path -------------------------------------------------------------------------------------
    def predict_files(
        self,
        sources: Iterable[str | Path | bytes],
        *,
        names: Sequence[str] | None = None,
        batch_size: int = 32,
        keep_outputs: bool = False,
        progress: ProgressFn | None = None,
    ) -> list[Prediction]:
        """Predict every source (path or bytes), in input order, `batch_size` images per forward pass; the images
        of a batch decode in parallel threads.

        A source that cannot be read yields a row with `error` set; it never stops the batch. With
        `keep_outputs` each row carries its logits, features and CAM (`Prediction.output`)."""
        sources = list(sources)
        if names is None:
            names = [f"<bytes #{i}>" if isinstance(s, bytes) else str(s) for i, s in enumerate(sources)]
        rows: list[Prediction] = []
        with Steps(progress, "predicting", len(sources)) as steps:
            for start in range(0, len(sources), batch_size):
                chunk = list(zip(sources[start : start + batch_size], names[start : start + batch_size]))
                loaded = self.map(lambda pair: self.load(pair[0], name=pair[1]), chunk)
                crops: list[np.ndarray] = []
                ok_names: list[str] = []
                out: list[Prediction | None] = []
                for result, (_, name) in zip(loaded, chunk):
                    if isinstance(result, (ImageError, OSError)):
                        out.append(Prediction(filename=name, error=f"{type(result).__name__}: {result}"))
                    elif isinstance(result, BaseException):
                        raise result  # a bug, not a bad file: do not hide it in an error column
                    else:
                        crops.append(result)
                        ok_names.append(name)
                        out.append(None)
                if crops:
                    batch = np.stack(self.map(self.normalize, crops))
                    decided = iter(self.decide(self.run(batch), ok_names, keep=keep_outputs))
                    out = [row if row is not None else next(decided) for row in out]
                rows.extend(row for row in out if row is not None)
                steps.advance(len(chunk))
        return rows



def open_engine(
    bundle: Bundle,
    *,
    backend: str = "torch",
    device: str | None = None,
    model: torch.nn.Module | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    spinning: bool = True,
    max_pixels: int | None = None,
    top_k: int = 3,
) -> Engine:
    """An Engine for `bundle` on `backend`: "torch" (eager fp32; `model` to reuse a loaded network), "onnx"
    (fp32 ONNX Runtime) or "onnx-int8". ONNX backends need `sightline export` (with --int8) first."""
    if backend == "torch":
        net = model if model is not None else bundle.load_model(device or "cpu")
        runner: Backend = TorchBackend(net, device=device, threads=threads)
    elif backend in ("onnx", "onnx-int8"):
        int8 = backend == "onnx-int8"
        path = bundle.int8_path if int8 else bundle.onnx_path
        if not path.is_file():
            raise BundleError(f"{path} is missing; run `sightline export {bundle.path}{' --int8' if int8 else ''}` "
                              "first.")
        runner = OnnxBackend(path, input_size=bundle.preprocessing.input_size, providers=providers,
                             threads=threads, spinning=spinning)
        runner.kind = backend
    else:
        raise SightlineError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}.")
    return Engine(runner, bundle=bundle, max_pixels=max_pixels, top_k=top_k)


def score_files(
    engines: Sequence[Engine],
    paths: Sequence[str | Path],
    *,
    batch_size: int = 64,
    chunk_size: int = 256,
    keep_crops: bool = False,
    progress: ProgressFn | None = None,
    task: str = "predicting",
) -> tuple[list[Output], Inputs]:
    """Each engine's Output (rows for the files that decode, in `paths` order), every file decoded ONCE for all
    engines (the seeds of one run), plus the Inputs (paths, failed, index; crops only with `keep_crops`).

    Streams: files are decoded `chunk_size` at a time and scored in forward passes of `batch_size` crops, formed
    over the decoded crops regardless of chunk boundaries, so the rows equal `run_crops` on all crops at once.
    Held at once: at most two chunks of crops and one partial batch, never the whole list (unless `keep_crops`,
    which keeps (N_ok, S, S, 3) uint8). The engines must share one preprocessing."""
    if not engines:
        raise ValueError("score_files needs at least one engine")
    pre = engines[0].preprocessing
    if any(e.preprocessing != pre for e in engines):
        raise ValueError("score_files needs engines with one preprocessing; group them by preprocessing")
    s = pre.input_size
    parts: list[list[Output]] = [[] for _ in engines]
    meta = Inputs(paths=[], crops=np.zeros((0, s, s, 3), dtype=np.uint8))
    kept: list[np.ndarray] = []
    pending = meta.crops  # decoded crops waiting for a full forward batch (fewer than batch_size)

    def score(crops: np.ndarray) -> None:  # each batch normalised once for every engine
        for start in range(0, len(crops), batch_size):
            x = engines[0].to_batch(crops[start : start + batch_size])
            for out, engine in zip(parts, engines):
                out.append(engine.run(x))

    with Steps(progress, task, len(paths)) as steps:
        for part in iter_crops(paths, pre, chunk_size=chunk_size):
            meta.paths += part.paths
            meta.failed += part.failed
            meta.index += part.index
            if keep_crops:
                kept.append(part.crops)
            block = np.concatenate([pending, part.crops]) if len(pending) else part.crops
            full = len(block) // batch_size * batch_size
            score(block[:full])
            pending = block[full:].copy()  # a copy: a view would keep the whole block alive
            del block
            steps.advance(len(part.paths) + len(part.failed))
        score(pending)
    if keep_crops and kept:
        meta.crops = np.concatenate(kept)
    return [Output.concat(out, num_classes=len(e.classes)) for out, e in zip(parts, engines)], meta
