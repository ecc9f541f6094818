"""End-to-end latency and throughput of the prediction path (issue 5, part 4).

For each backend (PyTorch eager fp32, ONNX Runtime fp32, ONNX Runtime int8) and batch size, time the four
stages a request goes through with the same inference core (`sightline.inference.Engine`) `predict` and `serve` use: decode (JPEG bytes ->
RGB, draft mode; a batch's images in parallel threads), preprocess (resize, crop, normalise, stack; also
threaded), inference, postprocess (temperature, thresholds, top-k). Reports p50/p95 batch latency, images/s,
model file size and peak memory (resident set growth while the backend is loaded and run: native memory that
tracemalloc would not see).

Example:
    >>> report = bench("runs/demo/bundle", batch_sizes=(1, 8, 32))
    >>> report["results"]["onnx-int8"]["32"]["images_per_s"]
"""
from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sightline.bundle import Bundle, load_bundle
from sightline.errors import SightlineError
from sightline.progress import ProgressFn, Steps

__all__ = ["BACKENDS", "BACKEND_SETTINGS", "backend_settings", "bench", "synthetic_jpegs"]

BACKENDS = ("torch", "onnx", "onnx-int8")
# What each side runs, printed beside its figures (issue 9: a baseline states its settings). The eager side follows
# PyTorch's own Performance Tuning Guide for inference (channels-last memory format for convolutional networks,
# gradients off through torch.inference_mode); `bench` adds the thread counts and the int8 format it found.
BACKEND_SETTINGS = {
    "torch": "PyTorch eager fp32, channels-last, torch.inference_mode (PyTorch Performance Tuning Guide)",
    "onnx": "ONNX Runtime fp32, all graph optimisations, idle threads spin",
    "onnx-int8": "ONNX Runtime int8 (static, per-channel int8 weights, uint8 activations), all graph optimisations, "
                 "idle threads spin",
}
# Shared by every backend, so it is stated once.
MAX_BATCH = 1024  # images per batch at most: one repeat of a larger batch outlasts any --budget
PIPELINE = ("decode (JPEG draft mode) and resize/crop/normalise of a batch's images on {workers} threads, then one "
            "forward pass per batch, then temperature/thresholds/top-k")


def synthetic_jpegs(n: int, *, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[bytes]:
    """`n` camera-like JPEGs (smooth gradients + texture, quality 90) as bytes, so decoding costs what it would
    for a real photograph of that size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        base = rng.uniform(0, 255, 3)
        grad = rng.uniform(-0.3, 0.3, (2, 3))
        img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
        img += rng.normal(0, 12, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _rss_bytes(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _model_size(bundle: Bundle, backend: str) -> int | None:
    path = {"torch": bundle.weights_path, "onnx": bundle.onnx_path, "onnx-int8": bundle.int8_path}[backend]
    return path.stat().st_size if path.is_file() else None


def backend_settings(bundle: Bundle, engine, *, int8_format: str | None = None) -> str:
    """BACKEND_SETTINGS of the engine's backend plus what it really runs with: threads, device, int8 format (from
    the bundle's export record unless `int8_format` says)."""
    kind = engine.kind
    text = BACKEND_SETTINGS[kind]
    runner = engine.backend
    if kind == "torch":
        import torch

        return f"{text}, {torch.get_num_threads()} intra-op threads, {runner.device}"
    threads = runner.session.get_session_options().intra_op_num_threads
    if kind == "onnx-int8":
        fmt = int8_format or bundle.extra.get("export", {}).get("int8", {}).get("format")
        text += f", {str(fmt).upper() if fmt else 'format not recorded'}"
    return f"{text}, {threads} intra-op threads, {', '.join(runner.providers)}"


def _bench_batch(engine, images: list[bytes], batch: int, repeats: int) -> dict[str, Any]:
    from sightline.data.transforms import stack

    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": [], "postprocess": []}
    totals: list[float] = []
    names = [f"img{i}" for i in range(batch)]
    for r in range(repeats + 1):  # the first pass warms caches and ORT's kernels and is not counted
        chunk = [images[(r * batch + i) % len(images)] for i in range(batch)]
        t0 = time.perf_counter()
        decoded = engine.map(engine.decode, chunk)
        bad = next((d for d in decoded if isinstance(d, BaseException)), None)
        if bad is not None:
            raise bad  # benchmark images must all be readable
        t1 = time.perf_counter()
        x = stack(engine.map(lambda im: engine.normalize(engine.crop(im)), decoded))
        t2 = time.perf_counter()
        out = engine.run(x)
        t3 = time.perf_counter()
        engine.decide(out, names)
        t4 = time.perf_counter()
        if r == 0:
            continue
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[key].append(dt * 1000)
        totals.append((t4 - t0) * 1000)
    p50 = _percentile(totals, 50)
    return {
        "batch_size": batch,
        "repeats": repeats,
        "p50_ms": round(p50, 3),
        "p95_ms": round(_percentile(totals, 95), 3),
        "images_per_s": round(batch * 1000 / float(np.mean(totals)), 2),
        "stages_p50_ms": {k: round(_percentile(v, 50), 3) for k, v in stages.items()},
    }


def bench(
    bundle_or_path: Bundle | str | Path,
    *,
    images: Sequence[bytes] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    backends: Sequence[str] = BACKENDS,
    min_images: int = 64,
    max_repeats: int = 20,
    time_budget_s: float = 4.0,
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Benchmark the prediction path; returns {"images", "results": {backend: {batch: figures}}, ...}.

    images: encoded images (bytes) to cycle through; default 64 synthetic 640x480 JPEGs.
    Each (backend, batch) runs until `time_budget_s` or `max_repeats` batches (at least 3).
    A backend whose file is missing (no `sightline export`, no `--int8`) is reported as skipped."""
    from sightline.inference import open_engine

    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SightlineError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}.")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise SightlineError(f"batch sizes must be whole numbers >= 1, got {list(batch_sizes)}.")
    too_big = [b for b in batch_sizes if int(b) > MAX_BATCH]
    if too_big:  # each repeat decodes and runs the whole batch, at least 4 times: minutes and gigabytes
        raise SightlineError(f"batch size(s) {too_big} above {MAX_BATCH}, the largest bench times; "
                             "use the batch sizes you will serve with, e.g. 1,8,32.")
    source = "given" if images is not None else "synthetic 640x480 JPEG"
    images = list(images) if images is not None else synthetic_jpegs(min_images)
    results: dict[str, Any] = {}
    workers = 0
    for backend in backends:
        size = _model_size(bundle, backend)
        if size is None:
            results[backend] = {"skipped": f"no model file; run `sightline export {bundle.path} --int8` first"}
            continue
        rss0 = _rss_bytes("VmRSS")
        peak_ok = _reset_peak_rss()
        entry: dict[str, Any] = {"model_bytes": size}
        with open_engine(bundle, backend=backend, threads=threads) as engine, \
                Steps(progress, backend, len(batch_sizes)) as steps:
            entry["settings"] = backend_settings(bundle, engine)
            workers = engine.workers
            for batch in batch_sizes:
                # estimate one batch's time, then choose how many repeats fit the budget
                probe = _bench_batch(engine, images, batch, 1)
                repeats = int(max(3, min(max_repeats, time_budget_s * 1000 / max(probe["p50_ms"], 1e-3))))
                entry[str(batch)] = _bench_batch(engine, images, batch, repeats)
                steps.advance()
            peak = _rss_bytes("VmHWM") if peak_ok else None
            entry["peak_rss_delta_mb"] = round((peak - rss0) / 2**20, 1) if peak and rss0 else None
            runner = engine.backend
            entry["providers"] = runner.providers if hasattr(runner, "providers") else [str(runner.device)]
        results[backend] = entry
    speedups = {}
    for batch in batch_sizes:
        ref = results.get("torch", {}).get(str(batch))
        for backend in ("onnx", "onnx-int8"):
            got = results.get(backend, {}).get(str(batch))
            if ref and got:
                speedups[f"{backend}_vs_torch_batch{batch}"] = round(got["images_per_s"] / ref["images_per_s"], 2)
    return {
        "bundle": str(bundle.path),
        "architecture": bundle.architecture,
        "input_size": bundle.preprocessing.input_size,
        "images": {"n": len(images), "source": source},
        "batch_sizes": list(batch_sizes),
        "pipeline": PIPELINE.format(workers=workers) if workers else None,
        "results": results,
        "speedup": speedups,
    }
