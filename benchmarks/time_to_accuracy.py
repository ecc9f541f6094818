"""Time to accuracy: default `sightline train` against a plain timm + PyTorch loop (issue 10).

Datasets (real images, built here on first use):
  hymenoptera     the ants/bees photos as they are (shorter side about 375 px)
  hymenoptera-64  the same photos with the shorter side downscaled to 64 px (PNG)
  digits          scikit-learn's 1,797 handwritten digits (8 x 8 px grey, 10 classes), split 70/15/15 stratified

The plain loop (`plain_loop`, about 40 lines) is what a user writes from the timm and PyTorch docs: the same
pretrained tf_efficientnet_lite0 (sightline.models.create_model: the packaged ImageNet weights), AdamW (lr 3e-4,
weight decay 0.01, constant), cross-entropy, torchvision RandomResizedCrop + horizontal flip for training and
Resize + CenterCrop (0.875) for validation, fp32, every image decoded from its file every epoch, DataLoader workers
as Sightline uses them (half the cores, at most 4). It runs a fixed number of epochs at each size of its size list;
its best resolution is the one with the highest final validation accuracy (the faster on a tie). Epochs: 5 on the
hymenoptera sets (8 steps an epoch), 3 on digits (40 steps an epoch); `--plain-epochs` overrides.

Measured: the plain loop's final validation accuracy at its best resolution is the target; for each side, the
wall time from the start (model creation included, imports not) to the end of the first epoch whose validation
accuracy reaches it. Sightline runs `train()` with its defaults (choices printed) and reports its val accuracy
after every epoch. Each run is a fresh process; image files are read once before, so both find them in the page
cache. CPU seconds (the process and its DataLoader workers) are reported beside wall seconds, since on a shared
machine wall time depends on what else runs.

Target: Sightline's time <= 0.5 x the plain loop's time.

One seed measures one draw of each side's noisy curve: on 76 val images one image is 1.3 points, and the time to
the plain loop's final value follows the epoch at which its curve first touches that value (hymenoptera-64 gave
0.31x in one session and 0.80x in the next with Sightline's side unchanged). `--seeds 0,1,2` runs both sides with
each seed (the plain loop's best size chosen per seed) and reports the ratio per seed and the median per dataset.

    python benchmarks/time_to_accuracy.py                        # all three datasets
    python benchmarks/time_to_accuracy.py --datasets digits      # one of them
    python benchmarks/time_to_accuracy.py --seeds 0,1,2          # median ratio over three seeds a side
    python benchmarks/time_to_accuracy.py --quick                # tiny: checks the script runs (1 epoch each)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_hymenoptera import DATA as HYMENOPTERA
from train_hymenoptera import cpu_seconds  # this script's folder is on sys.path when it runs

PLAIN_SIZES = {"hymenoptera": [160, 224], "hymenoptera-64": [64, 128, 224], "digits": [32, 64, 96]}
PLAIN_EPOCHS = {"hymenoptera": 5, "hymenoptera-64": 5, "digits": 3}  # digits: 40 steps an epoch, not 8
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- datasets ---------------------------------------------------------------------------------------------------
def build_dataset(name: str, work: Path) -> Path:
    """The dataset folder (split layout) for `name`, built under `work` on first use."""
    if name == "hymenoptera":
        return HYMENOPTERA
    out = work / name
    if (out / ".done").is_file():
        return out
    from PIL import Image, ImageOps

    if name == "hymenoptera-64":
        for src in sorted(HYMENOPTERA.rglob("*")):
            if src.is_file():
                with Image.open(src) as im:
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    scale = 64 / min(im.size)
                    im = im.resize((max(64, round(im.width * scale)), max(64, round(im.height * scale))),
                                   Image.Resampling.LANCZOS)
                dst = out / src.relative_to(HYMENOPTERA).with_suffix(".png")
                dst.parent.mkdir(parents=True, exist_ok=True)
                im.save(dst)
    elif name == "digits":
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
        index = np.arange(len(pixels))
        train, rest = train_test_split(index, test_size=0.3, stratify=digits.target, random_state=0)
        val, test = train_test_split(rest, test_size=0.5, stratify=digits.target[rest], random_state=0)
        for split, ids in (("train", train), ("val", val), ("test", test)):
            for i in ids:
                dst = out / split / str(digits.target[i]) / f"{i:04d}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels[i], mode="L").save(dst)
    else:
        raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(PLAIN_SIZES)}")
    (out / ".done").write_text("")
    return out


# --- the plain loop ---------------------------------------------------------------------------------------------
def plain_loop(data: Path, size: int, epochs: int, seed: int = 0) -> list[dict]:
    """A plain timm + PyTorch fine-tuning loop; val accuracy and elapsed seconds after every epoch."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    from sightline.models.factory import create_model

    torch.manual_seed(seed)
    start, cpu0 = time.perf_counter(), cpu_seconds()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), T.ToTensor(), norm])
    train_ds = datasets.ImageFolder(str(data / "train"), train_tf)
    val_ds = datasets.ImageFolder(str(data / "val"), val_tf)
    workers = max(0, min(4, (os.cpu_count() or 2) // 2))
    train_dl = DataLoader(train_ds, batch_size=32, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    val_dl = DataLoader(val_ds, batch_size=64, num_workers=workers, persistent_workers=workers > 0)
    model = create_model("tf_efficientnet_lite0", len(train_ds.classes), weights="auto").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    rows = []
    for epoch in range(epochs):
        model.train()
        for x, y in train_dl:
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_dl:
                correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        rows.append({"epoch": epoch + 1, "val_acc": correct / len(val_ds),
                     "seconds": round(time.perf_counter() - start, 1), "cpu_s": round(cpu_seconds() - cpu0, 1)})
        print(f"    plain {size} px epoch {epoch + 1}: val acc {rows[-1]['val_acc']:.4f} at {rows[-1]['seconds']} s",
              file=sys.stderr, flush=True)
    return rows


# --- sightline --------------------------------------------------------------------------------------------------
def sightline_run(data: Path, overrides: dict) -> dict:
    """Default `train()`; val accuracy and elapsed seconds after every epoch, and the choices it made."""
    import lightning as L

    from sightline.train.fit import train

    rows: list[dict] = []
    start, cpu0 = time.perf_counter(), cpu_seconds()

    class Curve(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            # epochs of the fit only: train() validates the best checkpoint again after it, no new epoch
            if not trainer.sanity_checking and trainer.state.fn == "fit":
                rows.append({"epoch": trainer.current_epoch + 1,
                             "val_acc": float(trainer.callback_metrics["val_acc"]),
                             "seconds": round(time.perf_counter() - start, 1),
                             "cpu_s": round(cpu_seconds() - cpu0, 1)})

    with tempfile.TemporaryDirectory() as tmp:
        run = train(data, Path(tmp) / "run", callbacks=[Curve()], progress=False, **overrides)
        metrics = json.loads((run / "metrics.json").read_text())
    choices = metrics["choices"]
    return {"curve": rows, "total_s": round(time.perf_counter() - start, 1), "total_cpu_s": round(cpu_seconds() - cpu0, 1),
            "input_size": choices["input_size"]["value"], "input_size_why": choices["input_size"]["why"],
            "stopped": choices["stopping"]["stopped"], "epochs_run": metrics["epochs_run"]}


# --- driver -----------------------------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> None:
    if args.side == "plain":
        result: dict = {"curve": plain_loop(args.data, args.size, args.epochs, seed=args.seed)}
    else:
        result = sightline_run(args.data, json.loads(args.overrides))
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"run {' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def time_to(curve: list[dict], target: float) -> dict | None:
    """The first epoch whose val accuracy reaches `target` (1e-9 slack for float noise), or None."""
    return next((row for row in curve if row["val_acc"] >= target - 1e-9), None)


def measure(name: str, data: Path, *, seed: int, sizes: list[int], epochs: int, overrides: dict) -> dict:
    """Both sides on one dataset with one seed: the plain loop at each size, then default `train`."""
    plain = {}
    for size in sizes:
        plain[size] = _spawn(["--side", "plain", "--data", str(data), "--size", str(size), "--epochs", str(epochs),
                              "--seed", str(seed)])
        last = plain[size]["curve"][-1]
        print(f"  plain {size} px: final val acc {last['val_acc']:.4f} after {last['epoch']} epochs, "
              f"{last['seconds']} s ({last['cpu_s']} CPU s)", flush=True)
    best = max(sizes, key=lambda s: (round(plain[s]["curve"][-1]["val_acc"], 6), -plain[s]["curve"][-1]["seconds"]))
    target = plain[best]["curve"][-1]["val_acc"]
    plain_hit = time_to(plain[best]["curve"], target)
    assert plain_hit is not None  # its own final value
    ours = _spawn(["--side", "sightline", "--data", str(data), "--overrides", json.dumps({**overrides, "seed": seed})])
    ours_hit = time_to(ours["curve"], target)
    curve = ", ".join(f"{r['val_acc']:.3f}@{r['seconds']:.0f}s" for r in ours["curve"])
    print(f"  sightline: input {ours['input_size']} px ({ours['input_size_why']})")
    print(f"  sightline: val acc per epoch {curve}; stopped: {ours['stopped']}; {ours['total_s']} s in all "
          f"({ours['total_cpu_s']} CPU s)", flush=True)
    return {"dataset": name, "seed": seed, "plain_size": best, "target": target, "plain_s": plain_hit["seconds"],
            "plain_cpu_s": plain_hit["cpu_s"], "plain_epoch": plain_hit["epoch"],
            "sightline_s": ours_hit["seconds"] if ours_hit else None,
            "sightline_cpu_s": ours_hit["cpu_s"] if ours_hit else None,
            "sightline_epoch": ours_hit["epoch"] if ours_hit else None, "sightline_size": ours["input_size"],
            "sightline_best": max(r["val_acc"] for r in ours["curve"])}


def ratio(row: dict) -> float:
    """Sightline's time over the plain loop's; infinite when Sightline never reached the target."""
    return row["sightline_s"] / row["plain_s"] if row["sightline_s"] is not None else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(PLAIN_SIZES), help="comma-separated: " + ", ".join(PLAIN_SIZES))
    parser.add_argument("--plain-epochs", type=int, default=None, help="epochs of the plain loop at each size "
                        "(default: 5 on the hymenoptera sets, 3 on digits)")
    parser.add_argument("--plain-sizes", default=None, help="override the plain loop's sizes, e.g. 64,128")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sightline-tta",
                        help="where the derived datasets are built (kept between runs)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; both sides run with each, and the "
                        "median ratio per dataset is reported (default: 0)")
    parser.add_argument("--quick", action="store_true", help="hymenoptera-64 only, 1 epoch per side: checks it runs")
    parser.add_argument("--side", choices=["plain", "sightline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return _child(args)
    names = ["hymenoptera-64"] if args.quick else [n.strip() for n in args.datasets.split(",") if n.strip()]
    overrides = {"epochs": 1, "input_size": 64} if args.quick else {}
    import torch

    print(f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    table = []
    for name in names:
        data = build_dataset(name, args.work)
        for path in data.rglob("*"):  # into the page cache, for both sides alike
            if path.is_file():
                path.read_bytes()
        sizes = ([int(s) for s in args.plain_sizes.split(",")] if args.plain_sizes else PLAIN_SIZES[name])
        sizes = sizes[:1] if args.quick else sizes
        epochs = 1 if args.quick else (args.plain_epochs or PLAIN_EPOCHS[name])
        for seed in seeds:
            print(f"\n{name} ({data}), seed {seed}", flush=True)
            table.append(measure(name, data, seed=seed, sizes=sizes, epochs=epochs, overrides=overrides))
    print("\ntime to the plain loop's final val accuracy (its best resolution), wall s (CPU s):")
    print(f"{'dataset':<16}{'seed':>5}{'target':>8}  {'plain':<24}{'sightline':<32}{'ratio':>6}")
    for r in table:
        plain_txt = f"{r['plain_s']:.0f} ({r['plain_cpu_s']:.0f}) @{r['plain_size']}px"
        if r["sightline_s"] is None:
            ours_txt = f"not reached (best {r['sightline_best']:.3f})"
        else:
            ours_txt = f"{r['sightline_s']:.0f} ({r['sightline_cpu_s']:.0f}) @{r['sightline_size']}px"
        print(f"{r['dataset']:<16}{r['seed']:>5}{r['target']:>8.4f}  {plain_txt:<24}{ours_txt:<32}{ratio(r):>6.2f}")
    if len(seeds) > 1:
        import statistics

        for name in names:
            ratios = [ratio(r) for r in table if r["dataset"] == name]
            print(f"{name}: median ratio {statistics.median(ratios):.2f} over seeds {args.seeds} "
                  f"({', '.join(f'{x:.2f}' for x in ratios)})")
    print("target: ratio <= 0.5" + ("" if not args.quick else " (quick run: settings shrunk, figures meaningless)"))
    print(json.dumps(table))


if __name__ == "__main__":
    main()
