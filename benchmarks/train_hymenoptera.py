"""Default `sightline train` on hymenoptera (ants vs bees, 243 train / 76 val / 77 test photos).

Target (issue 3): test accuracy >= 0.93 within 5 minutes of wall time on 2 CPU cores, default settings.
Test accuracy is a plain loop over the bundle (shared eval preprocessing), independent of the training code.

    python benchmarks/train_hymenoptera.py                 # full: default settings
    python benchmarks/train_hymenoptera.py --quick         # 1 epoch at 128 px: checks the script runs
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sightline.bundle import load_bundle
from sightline.data.datasets import scan_dataset
from sightline.data.images import load_image
from sightline.data.transforms import eval_preprocess, stack
from sightline.train.fit import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def test_accuracy(run: Path, data: Path) -> tuple[float, int]:
    bundle = load_bundle(run)
    model = bundle.load_model()
    samples = scan_dataset(data).split("test")
    correct = 0
    for start in range(0, len(samples), 32):
        chunk = samples[start:start + 32]
        x = torch.from_numpy(stack([eval_preprocess(load_image(s.path), bundle.preprocessing) for s in chunk]))
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        correct += int((pred == np.array([bundle.classes.index(s.label) for s in chunk])).sum())
    return correct / len(samples), len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None, help="RUN folder (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="1 epoch at 128 px, to check the script")
    args = parser.parse_args()
    overrides = {"epochs": 1, "input_size": 128} if args.quick else {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        started = time.perf_counter()
        run = train(args.data, out, **overrides)
        wall = time.perf_counter() - started
        acc, n = test_accuracy(run, args.data)
        val = load_bundle(run).metrics["val"]
    print(f"threads={torch.get_num_threads()} settings={'quick' if args.quick else 'default'}")
    print(f"train wall time: {wall:.1f} s (target <= 300 s)")
    print(f"val accuracy: {val['accuracy']:.4f} ({val['n_images']} images)")
    print(f"test accuracy: {acc:.4f} ({n} images, target >= 0.93)")
    if not args.quick:
        print("PASS" if acc >= 0.93 and wall <= 300 else "FAIL")


if __name__ == "__main__":
    main()
