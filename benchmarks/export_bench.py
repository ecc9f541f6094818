"""ONNX / int8 export benchmark (issue 5): end-to-end throughput and accuracy of PyTorch eager fp32, ONNX Runtime
fp32 and ONNX Runtime int8 on the same images, in the same process.

Targets: ORT int8 end-to-end images/s at batch 32 >= 3x PyTorch eager fp32; int8 test accuracy within 1 point of
fp32. Also compares the two int8 graph formats (QDQ, QOperator) on inference alone.

Every side runs through the inference core (`sightline.optimize.bench`, the path `predict` and `serve` use) and
the output states its settings. The eager baseline is what PyTorch's own Performance Tuning Guide recommends for
inference of a convolutional network: fp32, channels-last memory format, torch.inference_mode, PyTorch's default
intra-op threads. ONNX Runtime: all graph optimisations, intra-op threads = usable cores. Decode and preprocess
(the same functions and threads for every side) are part of each end-to-end figure.

Full run (a trained bundle; the lead's numbers):
    python benchmarks/export_bench.py --run runs/hymenoptera --data /work/shared/data/hymenoptera
Trial without a trained run (Lite0 ImageNet backbone + an untrained 2-class head: speed only, accuracy is
chance):
    python benchmarks/export_bench.py --trial --data /work/shared/data/hymenoptera --quick
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_targets


def trial_bundle(folder: Path, classes: list[str], model: str = "tf_efficientnet_lite0") -> Path:
    from sightline.bundle import Bundle
    from sightline.models.factory import create_model, default_preprocessing

    net = create_model(model, len(classes), weights="auto")
    Bundle(model, classes, default_preprocessing(model), name="trial").save(folder, net.state_dict())
    return folder


FORMATS_SETTINGS = ("inference only (no decode) on batches of {batch} validation images; both formats calibrated on "
                    "the same {n} validation images (percentile, per-channel); ONNX Runtime as `sightline bench` runs "
                    "it (see qdq_settings / qoperator_settings)")


def compare_formats(bundle, dataset, batch: int = 32, repeats: int = 5) -> dict:
    """Inference-only images/s of QDQ vs QOperator int8 graphs, same calibration, through the inference core.
    The bundle's own model.int8.onnx is put back afterwards."""
    import numpy as np

    from sightline.data.splits import load_split
    from sightline.data.transforms import to_batch
    from sightline.inference import open_engine, time_calls
    from sightline.optimize.bench import backend_settings
    from sightline.optimize.quantize import quantize_onnx

    pre = bundle.preprocessing
    calib = to_batch(load_split(dataset, "val", classes=bundle.classes, preprocessing=pre, max_images=64).crops, pre)
    x = np.ascontiguousarray(np.resize(calib, (batch, *calib.shape[1:])))
    out: dict = {}
    keep = bundle.int8_path.read_bytes() if bundle.int8_path.is_file() else None
    try:
        for fmt in ("qdq", "qoperator"):
            quantize_onnx(bundle.onnx_path, bundle.int8_path, calib, quant_format=fmt)
            with open_engine(bundle, backend="onnx-int8") as engine:
                t = time_calls(lambda: engine.run(x), items=batch, warmup=1, min_repeats=repeats,
                               max_repeats=repeats)
                out[fmt] = round(t.items_per_s, 1)
                out[f"{fmt}_settings"] = backend_settings(bundle, engine, int8_format=fmt)
        out["settings"] = FORMATS_SETTINGS.format(batch=batch, n=len(calib))
    finally:
        if keep is not None:
            bundle.int8_path.write_bytes(keep)
    return out


def table(figures: dict) -> str:
    """The end-to-end figures as a text table: images/s and p50 ms per batch for each backend and batch size,
    then what each side ran."""
    sizes = figures["batch_sizes"]
    head = f"{'backend':<10}" + "".join(f"{f'bs {b} img/s':>13}{'p50 ms':>9}" for b in sizes)
    lines = [head]
    for backend, entry in figures["results"].items():
        if "skipped" in entry:
            lines.append(f"{backend:<10} skipped: {entry['skipped']}")
            continue
        lines.append(f"{backend:<10}" + "".join(
            f"{entry[str(b)]['images_per_s']:>13.1f}{entry[str(b)]['p50_ms']:>9.1f}" for b in sizes))
    lines += [f"{k}: {v}x" for k, v in figures["speedup"].items()]
    lines += [f"{backend}: {entry['settings']}" for backend, entry in figures["results"].items() if "settings" in entry]
    lines.append(f"every backend: {figures['pipeline']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="trained RUN or bundle folder (copied; the original is not modified)")
    ap.add_argument("--trial", action="store_true", help="use Lite0 ImageNet backbone + untrained head")
    ap.add_argument("--data", type=Path, required=True, help="dataset in the split layout (val: calibration, test)")
    ap.add_argument("--quick", action="store_true", help="short timings (to check the script runs)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not (args.run or args.trial):
        ap.error("pass --run RUN or --trial")

    from sightline.bundle import load_bundle, resolve_bundle_dir
    from sightline.data.datasets import scan_dataset
    from sightline.optimize.bench import bench
    from sightline.optimize.export import export

    work = Path(tempfile.mkdtemp(prefix="sightline-export-bench-"))
    try:
        dataset = scan_dataset(args.data, require_splits=("val", "test"))
        if args.trial:
            folder = trial_bundle(work / "bundle", dataset.classes)
        else:
            folder = work / "bundle"
            shutil.copytree(resolve_bundle_dir(args.run), folder)
        t0 = time.perf_counter()
        record = export(folder, int8=True, data_dir=args.data)
        export_s = time.perf_counter() - t0
        bundle = load_bundle(folder)
        test_images = [s.path.read_bytes() for s in dataset.split("test")]
        sizes = (1, 8, 32)
        figures = bench(bundle, images=test_images, batch_sizes=sizes, time_budget_s=1.0 if args.quick else 10.0,
                        max_repeats=3 if args.quick else 50)
        formats = compare_formats(bundle, dataset, repeats=2 if args.quick else 10)
        q = record["int8"]["test"]
        speedup = figures["speedup"].get("onnx-int8_vs_torch_batch32")
        drop_points = 100 * q["accuracy_drop"]
        summary = {
            "bundle": str(args.run or "trial Lite0"),
            "export_s": round(export_s, 1),
            "parity": record["parity"],
            "int8": record["int8"],
            "bench": figures,
            "int8_formats_inference_images_per_s_batch32": formats,
            "targets": {
                "int8_vs_torch_batch32": {"value": speedup, "target": ">= 3.0", "pass": bool(speedup and speedup >= 3.0)},
                "int8_accuracy_drop_points": {"value": round(drop_points, 2), "target": "<= 1.0",
                                              "pass": drop_points <= 1.0},
            },
        }
        text = json.dumps(summary, indent=2, default=str)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        print(table(figures), file=sys.stderr)
        print(f"int8 formats, images/s: QDQ {formats['qdq']}, QOperator {formats['qoperator']} "
              f"({formats['settings']})", file=sys.stderr)
        print_targets(summary["targets"])
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
