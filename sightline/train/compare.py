"""`compare`: train several architectures on the same stratified sample with the same budget, then measure
validation accuracy / macro-F1 (full val split), parameters, size on disk and CPU latency per image."""
from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sightline.data.split import place_file
from sightline.errors import UserInputError

__all__ = ["compare", "stratified_sample", "cpu_latency_ms"]

# a hidden file (datasets skip those) that marks OUT/sample as compare's own, so a later run may replace it
SAMPLE_MARK = ".sightline-compare-sample"


def stratified_sample(samples: list[Any], n: int | None, *, seed: int = 0) -> list[Any]:
    """`n` samples keeping each class's share (at least one per class); all of them when n is None or larger."""
    if n is None or n >= len(samples):
        return list(samples)
    by_class: dict[str, list[Any]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    chosen: list[Any] = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: s.relpath)
        k = max(1, round(n * len(items) / len(samples)))
        chosen += rng.sample(items, min(k, len(items)))
    return chosen


def cpu_latency_ms(model: Any, input_size: int, *, repeats: int = 10) -> float:
    """Median wall time of one (1, 3, S, S) forward pass on CPU through the inference core's PyTorch backend,
    milliseconds (sightline.inference.time_calls: 3 warm-up runs, `repeats` timed)."""
    from sightline.inference import TorchBackend, time_calls

    backend = TorchBackend(model, device="cpu")
    x = np.random.default_rng(0).standard_normal((1, 3, input_size, input_size)).astype(np.float32)
    return time_calls(lambda: backend.run(x), warmup=3, min_repeats=repeats, max_repeats=repeats).p50_ms


def compare(
    data_dir: str | Path,
    models: list[str],
    *,
    sample: int | None = 300,
    epochs: int = 5,
    input_size: int | None = None,
    batch_size: int = 32,
    weights: str = "auto",
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train each of `models` on the same stratified sample of DATA/train (`sample` images) for `epochs` epochs
    and evaluate on the whole DATA/val split. Returns {"rows": [...], "recommendation": str, "n_train", "n_val"};
    each row: model, val_accuracy, val_macro_f1, params_m, size_mb (weights.safetensors), cpu_ms_per_image
    (batch 1, this machine's threads), fit_seconds, run."""
    from sightline.bundle import load_bundle
    from sightline.data.datasets import scan_dataset
    from sightline.models.factory import resolve_model_name
    from sightline.train.fit import train

    names = [resolve_model_name(m) for m in models]  # fail on a typo before any training
    if len(set(names)) != len(names):
        raise UserInputError(f"--models lists a model twice ({', '.join(models)}).")
    if sample is not None and sample < 2:  # fewer than one image a class: every model would fail after training
        raise UserInputError(f"--sample {sample} must be at least 2 (an image a class), or left out for all images.")
    dataset = scan_dataset(data_dir, require_splits=("train", "val"))
    chosen = stratified_sample(dataset.split("train"), sample, seed=seed) + dataset.split("val")
    own_tmp = out_dir is None
    out = Path(tempfile.mkdtemp(prefix="sightline-compare-")) if own_tmp else Path(out_dir)
    try:
        sample_dir = out / "sample"
        if sample_dir.exists():  # an earlier compare's sample is replaced; a folder of the user's is not ours
            if not (sample_dir / SAMPLE_MARK).is_file():
                raise UserInputError(f"'{sample_dir}' exists and compare did not write it; choose another --out "
                                     "(compare puts its sample there).")
            shutil.rmtree(sample_dir)
        sample_dir.mkdir(parents=True)
        (sample_dir / SAMPLE_MARK).write_text("the stratified sample `sightline compare` trains on; it replaces "
                                              "this folder on its next run into the same --out\n")
        for s in chosen:
            place_file(s.path, sample_dir / s.relpath)  # hard link (a copy across file systems)
        rows = []
        for name in names:
            started = time.perf_counter()
            run = train(sample_dir, out / name, model=name, weights=weights, epochs=epochs, input_size=input_size,
                        batch_size=batch_size, seed=seed, patience=epochs, progress=progress)
            fit_s = time.perf_counter() - started
            bundle = load_bundle(run)
            model = bundle.load_model()
            rows.append({
                "model": name,
                "val_accuracy": bundle.metrics["val"]["accuracy"],
                "val_macro_f1": bundle.metrics["val"]["macro_f1"],
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "size_mb": bundle.weights_path.stat().st_size / 1e6,
                "cpu_ms_per_image": cpu_latency_ms(model, bundle.preprocessing.input_size),
                "input_size": bundle.preprocessing.input_size,
                "fit_seconds": fit_s,
                "run": None if own_tmp else str(run),
            })
    finally:
        if own_tmp:
            shutil.rmtree(out, ignore_errors=True)
    n_train = len(chosen) - len(dataset.split("val"))
    return {"rows": rows, "recommendation": recommend(rows), "n_train": n_train, "n_val": len(dataset.split("val")),
            "split": "val", "epochs": epochs}


def recommend(rows: list[dict[str, Any]], *, tolerance: float = 0.01) -> str:
    """The fastest model whose val macro-F1 is within `tolerance` of the best (small val sets are noisy)."""
    best = max(r["val_macro_f1"] for r in rows)
    good = [r for r in rows if r["val_macro_f1"] >= best - tolerance]
    pick = min(good, key=lambda r: r["cpu_ms_per_image"])
    others = [r["model"] for r in rows if r is not pick]
    why = (f"val macro-F1 {pick['val_macro_f1']:.3f} is within {tolerance:.2f} of the best ({best:.3f}) "
           f"at {pick['cpu_ms_per_image']:.1f} ms/image on this CPU") if others else "the only model compared"
    return f"{pick['model']}: {why}."
