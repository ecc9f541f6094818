"""Images per second for the data stage: decode + hash (sha256 + pHash + blur) and the audit checks.

Runs on a generated dataset (default 2,000 images at 224 px) and on a real photo folder (hymenoptera), and
compares against a naive baseline in the same run: single-threaded full PIL decode + sha256 + pHash.

    python benchmarks/data_throughput.py                      # full figures (2,000 images)
    python benchmarks/data_throughput.py --quick              # 300 images at 96 px, a smoke run
    python benchmarks/data_throughput.py --real /path/to/hymenoptera
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from PIL import Image

from sightline.data.audit import audit_dataset, audit_records
from sightline.data.datasets import scan_dataset
from sightline.data.hashing import phash
from sightline.data.manifest import describe_images
from sightline.data.synth import synthesize

DEFAULT_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def naive(paths: list[Path]) -> None:
    """The baseline: one thread, full decode, no draft."""
    for p in paths:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        try:
            with Image.open(p) as im:
                phash(im.convert("RGB"))
        except OSError:  # a planted corrupt file
            continue


def measure(name: str, root: Path, workers: int | None) -> list[tuple[str, str, int, float]]:
    rows = []
    t = time.perf_counter()
    ds = scan_dataset(root)
    rows.append((name, "scan (header check)", len(ds.samples), time.perf_counter() - t))
    paths = [s.path for s in ds.samples]
    t = time.perf_counter()
    naive(paths)
    rows.append((name, "baseline: 1 thread, full decode + sha256 + pHash", len(paths), time.perf_counter() - t))
    t = time.perf_counter()
    records = describe_images(ds, workers=workers)
    rows.append((name, f"describe_images (threads={workers or 'auto'}, draft)", len(records), time.perf_counter() - t))
    t = time.perf_counter()
    audit_records(records, skipped=ds.skipped)
    rows.append((name, "audit checks on the records", len(records), time.perf_counter() - t))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        audit_dataset(root, out=tmp, workers=workers, dataset=ds)
        rows.append((name, "audit end to end (+ json, html)", len(records), time.perf_counter() - t))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="a real dataset folder (split or flat)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="300 images at 96 px")
    args = parser.parse_args()
    n, size = (300, 96) if args.quick else (args.n, args.size)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        t = time.perf_counter()
        synthesize(root, n=n, size=size, seed=0, plant_issues=True, workers=args.workers)
        rows.append((f"synth {n}x{size}px", "generate (synth --plant-issues)", n, time.perf_counter() - t))
        rows += measure(f"synth {n}x{size}px", root, args.workers)
    if args.real.is_dir():
        rows += measure(args.real.name, args.real, args.workers)
    else:
        print(f"skipping the real dataset: '{args.real}' not found (pass --real PATH)")

    print(f"{'dataset':<22} {'stage':<52} {'images':>7} {'seconds':>8} {'images/s':>9}")
    for dataset, stage, count, seconds in rows:
        rate = count / seconds if seconds == seconds and seconds > 0 else float("nan")
        print(f"{dataset:<22} {stage:<52} {count:>7} {seconds:>8.2f} {rate:>9.0f}")


if __name__ == "__main__":
    main()
