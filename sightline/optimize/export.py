"""ONNX export with a parity check against PyTorch (issue 5, part 1).

`export()` writes `model.onnx` into the bundle (opset 18, dynamic batch axis, torch.export-based exporter),
compares ONNX Runtime logits with PyTorch logits on validation images (max absolute difference, top-1
agreement), refuses the export when they disagree, and records the figures in `model.json`
(`extra["export"]`). With `int8=True` it also writes `model.int8.onnx` (sightline.optimize.quantize).

Example:
    >>> report = export("runs/demo", int8=True, data_dir="data/parts")
    >>> report["parity"]["max_abs_diff"], report["int8"]["test"]["accuracy"]
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sightline.bundle import Bundle, is_registry_copy, load_bundle, resolve_bundle_dir
from sightline.errors import BundleError, DatasetError, UserInputError

__all__ = ["export", "export_onnx", "check_parity", "ParityError", "recorded_data"]

OPSET = 18
# fp32 ONNX Runtime vs PyTorch on CPU agree to ~1e-5 on logits; 1e-3 (relative to the logit scale) leaves room
# for other kernels (CUDA, oneDNN) while still catching a wrong graph, which is off by O(1).
PARITY_TOL = 1e-3


class ParityError(BundleError):
    """The exported graph does not reproduce PyTorch's logits."""


def export_onnx(model, path: Path, input_size: int, *, opset: int = OPSET) -> Path:
    """Export an eval-mode timm classifier taking (N, 3, S, S) to ONNX with a dynamic batch axis and the inference
    core's outputs: `logits` (N, K), `features` (N, D) and, for a pool + linear head, `cam` (N, h, w)
    (sightline.inference.FeatureModel).

    Uses the torch.export-based exporter (dynamo=True): it gives a clean, constant-folded graph for timm
    EfficientNets without the TorchScript exporter's deprecation warnings."""
    import contextlib
    import io

    import torch

    from sightline.inference import OUTPUT_NAMES, FeatureModel

    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = FeatureModel(model.eval())
    example = (torch.randn(2, 3, input_size, input_size),)
    with torch.no_grad():
        n_outputs = len(wrapped(*example))
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_name(path.name + ".tmp")
    # The exporter narrates each step on stdout; keep stdout for the command's own output (--json).
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            program = torch.onnx.export(
                wrapped,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=list(OUTPUT_NAMES[:n_outputs]),
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
            program.save(str(tmp))
        tmp.replace(path)
    except BaseException:  # a full disk, Ctrl-C: no half-written graph left beside the bundle
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def check_parity(model, onnx_path: Path, inputs: np.ndarray, *, tol: float = PARITY_TOL) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime on (N, 3, S, S) inputs through the inference core's two backends.

    Returns {"n_images", "max_abs_diff", "tolerance", "top1_agreement", "features": {max_abs_diff, tolerance},
    "cam": {max_abs_diff, tolerance} | None, "ok"}. `ok` requires logits within tol * max(1, max |logit|) with
    identical top-1 classes (ties within tol excepted), and features (and CAMs) within tol of their own scale."""
    from sightline.inference import OnnxBackend, TorchBackend

    torch_run = TorchBackend(model, device="cpu")
    onnx_run = OnnxBackend(onnx_path, input_size=int(inputs.shape[-1]), providers=["CPUExecutionProvider"])
    try:
        ref = [torch_run.run(inputs[i : i + 32]) for i in range(0, len(inputs), 32)]
        got = [onnx_run.run(inputs[i : i + 32]) for i in range(0, len(inputs), 32)]
    finally:
        torch_run.close()
        onnx_run.close()
    from sightline.inference import Output

    ref_o, got_o = Output.concat(ref), Output.concat(got)
    ref_a, got_a = ref_o.logits, got_o.logits
    diff = float(np.abs(ref_a - got_a).max())
    scale = max(1.0, float(np.abs(ref_a).max()))
    agree = ref_a.argmax(1) == got_a.argmax(1)
    # a disagreement only counts when PyTorch's top-2 logits are further apart than the tolerance
    top2 = np.sort(ref_a, axis=1)[:, -2:]
    tie = (top2[:, 1] - top2[:, 0]) <= tol * scale
    ok = diff <= tol * scale and bool(np.all(agree | tie))
    extra: dict[str, Any] = {}
    for key, a, b in (("features", ref_o.features, got_o.features), ("cam", ref_o.cams, got_o.cams)):
        if a is None or b is None:
            extra[key] = None
            ok = ok and key == "cam" and a is None  # features are required; a CAM only where the head has one
            continue
        d = float(np.abs(a - b).max())
        t = tol * max(1.0, float(np.abs(a).max()))
        extra[key] = {"max_abs_diff": d, "tolerance": t}
        ok = ok and d <= t
    return {
        "n_images": int(len(inputs)),
        "max_abs_diff": diff,
        "tolerance": tol * scale,
        "top1_agreement": float(agree.mean()),
        **extra,
        "ok": bool(ok),
    }


def recorded_data(run_or_bundle: str | Path, bundle: Bundle) -> tuple[Path | None, str | None]:
    """(the dataset folder the run was trained on, when the run recorded it (bundle extra or RUN/config.*) and it
    is there; the folder it recorded when none is: moved or deleted since, for a message that says so instead of
    "not recorded")."""
    candidates: list[Any] = []
    for key in ("train", "config", "training"):
        section = bundle.extra.get(key)
        if isinstance(section, dict):
            candidates += [section.get("data_dir"), section.get("data")]
    candidates.append(bundle.extra.get("data_dir"))
    run_dir = resolve_bundle_dir(run_or_bundle).parent
    for name in ("config.json", "config.yaml", "config.yml", "train_config.yaml"):
        path = run_dir / name
        if path.is_file():
            try:
                if path.suffix == ".json":
                    data = json.loads(path.read_text())
                else:
                    import yaml

                    data = yaml.safe_load(path.read_text())
            except Exception:  # noqa: BLE001 - a damaged config only means "not recorded"
                continue
            if isinstance(data, dict):
                candidates += [data.get("data_dir"), data.get("data")]
    recorded = [value for value in candidates if isinstance(value, str) and value]
    for value in recorded:
        if Path(value).is_dir():
            return Path(value), None
    return None, (recorded[0] if recorded else None)


def export(
    run_or_bundle: str | Path,
    *,
    int8: bool = False,
    data_dir: str | Path | None = None,
    opset: int = OPSET,
    max_parity_images: int = 64,
    quant_format: str = "qdq",
    tol: float = PARITY_TOL,
    max_calibration_images: int = 256,
) -> dict[str, Any]:
    """Export a trained bundle to ONNX (and int8), check parity, record everything in model.json.

    data_dir: dataset in the split layout; its `val` split feeds the parity check and int8 calibration, its
    `test` split the before/after accuracy, ECE and size. Default: the dataset recorded by training. Without
    data, parity is checked on random inputs and int8 export is refused (calibration needs real images).
    max_calibration_images: val images the int8 calibration sees (a seeded, class-mixed subset when val has
    more; ORT's histogram calibrators take one image per step, so this is most of the int8 export's time).
    Raises ParityError (and removes the bad file) when ONNX and PyTorch disagree.
    Returns the dict stored as `model.json["extra"]["export"]`."""
    bundle = load_bundle(run_or_bundle)
    if bundle.path is not None and is_registry_copy(bundle.path):  # rewritten, it no longer matched its hash
        raise UserInputError(f"'{bundle.path}' is a registry copy, which must stay as it was added (its hash is checked "
                             "before it is served); export the RUN it was added from (`sightline registry show` names "
                             "it) and add it again.")
    gone = None
    if data_dir is None:
        data_dir, gone = recorded_data(run_or_bundle, bundle)
    moved = f"the run's dataset '{gone}' is not there any more" if gone else "no dataset given or recorded"
    if int8 and data_dir is None:
        raise DatasetError(f"int8 export needs validation images for calibration ({moved}); pass --data DATA "
                           "(split layout).")
    if int8 and quant_format not in ("qdq", "qoperator"):
        raise UserInputError(f"--format {quant_format!r} is unknown; use qdq or qoperator.")
    for target in (bundle.onnx_path, bundle.int8_path) if int8 else (bundle.onnx_path,):
        for taken in (target, target.with_name(target.name + ".tmp")):  # the graph is written to .tmp, then renamed
            if taken.is_dir():  # found only after the export, named as the .tmp, which was left behind (13 MB)
                raise UserInputError(f"'{taken}' is a folder where the exported model file goes; move or remove it, "
                                     "then export again. Nothing was exported.")
    model = bundle.load_model("cpu")
    s = bundle.preprocessing.input_size
    # The parity images are loaded before model.onnx is replaced: a dataset problem must not leave an
    # unchecked model behind.
    dataset = None
    if data_dir is not None:
        from sightline.data.datasets import scan_dataset

        dataset = scan_dataset(data_dir, require_splits=("val",))  # once, for parity, calibration and test
        from sightline.data.splits import load_split
        from sightline.data.transforms import to_batch

        pre = bundle.preprocessing
        val = load_split(dataset, "val", classes=bundle.classes, preprocessing=pre, max_images=max_parity_images)
        inputs = to_batch(val.crops, pre)
        source = f"{Path(data_dir)}/val"
    else:
        inputs = np.random.default_rng(0).standard_normal((8, 3, s, s)).astype(np.float32)
        source = f"random inputs ({moved}; pass --data DATA to check on real images)"

    t0 = time.perf_counter()
    export_onnx(model, bundle.onnx_path, s, opset=opset)
    export_s = time.perf_counter() - t0
    parity = check_parity(model, bundle.onnx_path, inputs, tol=tol)
    parity["split"] = "val" if data_dir is not None else None
    parity["source"] = source
    if not parity["ok"]:
        bundle.onnx_path.unlink(missing_ok=True)
        raise ParityError(
            f"ONNX export of {bundle.path} breaks parity on {parity['n_images']} images from {source}: max abs "
            f"logit diff {parity['max_abs_diff']:.3g} (tolerance {parity['tolerance']:.3g}), top-1 agreement "
            f"{parity['top1_agreement']:.3f}, features {parity['features']}; model.onnx was not written. Report this "
            "with the architecture name."
        )
    report: dict[str, Any] = {
        "onnx": bundle.onnx_path.name,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)",
        "dynamic_batch": True,
        "size_bytes": bundle.onnx_path.stat().st_size,
        "export_s": round(export_s, 2),
        "parity": parity,
        "data_dir": str(data_dir) if data_dir is not None else None,
    }
    if int8:
        from sightline.optimize.quantize import quantize_bundle

        report["int8"] = quantize_bundle(bundle, dataset, quant_format=quant_format,
                                         max_calibration_images=max_calibration_images)
    else:
        bundle.int8_path.unlink(missing_ok=True)  # a stale int8 model would no longer match the weights
    bundle.extra["export"] = report
    bundle.write_json()
    return report
