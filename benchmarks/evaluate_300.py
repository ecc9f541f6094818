"""Benchmark: `sightline evaluate` (metrics + bootstrap, calibration/thresholds on val, Grad-CAM gallery and
pointing game, corruption suite) on 300 test images. Target: <= 2 minutes on 2 CPU cores.

The data is synthetic (sightline data synth, 224 px, ~2000 images so the test split holds 300) and the model is
Lite0 with its offline ImageNet backbone and a linear head fitted on a few train images: evaluation time does not
depend on how well the model was trained.

The monitor's reference profile: `sightline train` writes one into every bundle it makes (k-NN bank of train
images, stand-in outliers, at temperature 1), and `evaluate` refreshes it at its fitted temperature from its own val
pass, reusing the stored bank and stand-in outputs. So by default (--profile train) the setup writes the profile the
way train does (sightline.evaluate.reference.build_bundle_reference, as train calls it; timed apart as
`train_profile_s`) and the figure is evaluate on a bundle as train leaves it. --profile none: a bundle without one
(e.g. made by hand or by an older version), where evaluate builds it in full.

    python benchmarks/evaluate_300.py            # full figures (224 px, 300 test images)
    python benchmarks/evaluate_300.py --quick    # a smoke run (64 px, ~60 test images)
    python benchmarks/evaluate_300.py --profile none   # evaluate builds the reference profile in full
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 px, ~60 test images: checks the script runs")
    ap.add_argument("--size", type=int, default=None, help="image and input size in px (default 224; 64 quick)")
    ap.add_argument("--test-images", type=int, default=None, help="test images (default 300; 60 quick)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is 2 cores)")
    ap.add_argument("--profile", choices=("train", "none"), default="train",
                    help="train: the setup writes the reference profile as `sightline train` does (default); none: "
                         "no profile, evaluate builds it in full")
    ap.add_argument("--keep", type=Path, default=None, help="keep data, bundle and report in this folder")
    args = ap.parse_args()
    size = args.size or (64 if args.quick else 224)
    n_test = args.test_images or (60 if args.quick else 300)
    torch.set_num_threads(args.threads)

    from sightline.bundle import Bundle
    from sightline.data.synth import synthesize
    from sightline.evaluate.run import evaluate
    from sightline.inference import Engine, TorchBackend, load_crops
    from sightline.models.factory import create_model, default_preprocessing

    root = args.keep or Path(tempfile.mkdtemp(prefix="sightline-bench-eval-"))
    data = root / "data"
    t0 = time.perf_counter()
    if not data.exists():
        synthesize(data, n=int(round(n_test / 0.15)), size=size, seed=0)
    t_synth = time.perf_counter() - t0

    t0 = time.perf_counter()
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    pre = default_preprocessing("tf_efficientnet_lite0", input_size=size)
    model = create_model("tf_efficientnet_lite0", len(classes), weights="auto").eval()
    files = [p for c in classes for p in sorted((data / "train" / c).glob("*.jpg"))[:25]]
    inputs = load_crops(files, pre)
    y = torch.tensor([classes.index(p.parent.name) for p in inputs.paths])
    with Engine(TorchBackend(model, device="cpu"), preprocessing=pre, classes=classes) as engine:
        feats = torch.from_numpy(engine.run_crops(inputs.crops).features)  # pooled penultimate features
    head = model.get_classifier()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), y).backward()
        opt.step()
    Bundle("tf_efficientnet_lite0", classes, preprocessing=pre).save(root / "run" / "bundle", model.state_dict())
    t_model = time.perf_counter() - t0

    t_profile = None
    if args.profile == "train":  # as sightline.train.fit._write_reference does at the end of training
        from sightline.evaluate.options import EvaluateOptions
        from sightline.evaluate.reference import build_bundle_reference

        t0 = time.perf_counter()
        build_bundle_reference(root / "run" / "bundle", data, seed=EvaluateOptions().seed, device="cpu")
        t_profile = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    m = evaluate(root / "run", data)
    wall = time.perf_counter() - t0
    rob = m["robustness"]
    figures = {
        "test_images": m["n_images"],
        "val_images": m["data"]["n_val"],
        "input_px": size,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "evaluate_wall_s": round(wall, 1),
        "stages_s": m["timings"],
        "region_images": (m.get("pointing_game") or {}).get("n_images"),
        "robustness_runs": f"{rob['n_images']} images x {len(rob['results'])} corruptions"
        f" x {len(rob['severities'])} severities",
        "accuracy": round(m["accuracy"], 3),
        "synth_s": round(t_synth, 1),
        "model_s": round(t_model, 1),
        "profile": args.profile,
        "train_profile_s": t_profile,
        "report": m["files"].get("report"),
        "target_s": 120,
        "within_target": wall <= 120,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
