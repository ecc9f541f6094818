"""Training throughput (images/s) of Sightline's training step (Lightning + ClassifierSystem, at the settings
`sightline train` picks for this device) against a plain timm + PyTorch loop with the same model, resolution,
batch size, loss and optimiser; plus the peak memory of a Sightline training process.

Targets (issue 3): ratio >= 1.0; peak memory for Lite0 at 224 px, batch 32 <= 4 GB (CPU).

Method: each side runs in a fresh subprocess (so neither inherits the other's heap or warm caches), in the order
plain, sightline, sightline, plain; the figure per side is the better of its two runs. Both read batches through a
DataLoader from a small pool of random images held in memory, so both measure the training step, not JPEG
decoding. Peak memory is the maximum resident set size of the Sightline subprocess.

    python benchmarks/train_throughput.py                      # full: Lite0, 224 px, batch 32, 20 timed steps
    python benchmarks/train_throughput.py --quick              # 64 px, batch 8, 3 steps: checks the script runs
    python benchmarks/train_throughput.py --precision bf16-mixed --channels-last   # force a variant for sightline
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

from sightline.models.factory import create_model

POOL = 4  # distinct random batches, cycled: memory stays small whatever the number of steps


class RandomImages(Dataset):
    def __init__(self, n: int, size: int, pool: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(pool, 3, size, size, generator=g)
        self.y = torch.randint(0, 2, (pool,), generator=g)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i % len(self.x)], self.y[i % len(self.x)]


def _loader(args: argparse.Namespace) -> DataLoader:
    n = (args.warmup + args.steps) * args.batch
    return DataLoader(RandomImages(n, args.size, POOL * args.batch), batch_size=args.batch, shuffle=True,
                      pin_memory=torch.cuda.is_available())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(args: argparse.Namespace, device: str) -> float:
    model = create_model(args.model, 2, weights="auto").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    start = 0.0
    for step, (x, y) in enumerate(_loader(args)):
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def sightline_step(args: argparse.Namespace, device: str) -> tuple[float, str, bool]:
    import lightning as L

    from sightline.train.config import TrainConfig
    from sightline.train.hardware import resolve_hardware
    from sightline.train.system import ClassifierSystem

    cfg = TrainConfig(model=args.model, batch_size=args.batch)
    if args.precision:
        cfg = cfg.with_overrides(precision=args.precision)
    if args.channels_last:
        cfg = cfg.with_overrides(channels_last=True)
    # what `train` does here: on a CPU, the candidates timed (cached per machine, model, size and batch)
    precision, channels_last, _ = resolve_hardware(cfg, 2, input_size=args.size)

    class Timer(L.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):  # noqa: ANN001
            if batch_idx == args.warmup:
                _sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module):  # noqa: ANN001
            _sync(device)
            self.end = time.perf_counter()

    model = create_model(args.model, 2, weights="auto")
    system = ClassifierSystem(model, 2, lr=1e-4, channels_last=channels_last)
    timer = Timer()
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=1,
                        precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(system, _loader(args))
    return args.steps * args.batch / (timer.end - timer.start), precision, channels_last


def _side(args: argparse.Namespace) -> None:
    """Child process: run one side, print one JSON line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if args.side == "plain":
        result = {"images_per_s": plain_loop(args, device)}
    else:
        ips, precision, channels_last = sightline_step(args, device)
        result = {"images_per_s": ips, "precision": precision, "channels_last": channels_last}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    if device == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    result.update(device=device, threads=torch.get_num_threads())
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(side: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--side", side, *argv], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{side} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default=None, choices=["32-true", "bf16-mixed"],
                        help="force sightline's precision (default: what `sightline train` picks here)")
    parser.add_argument("--channels-last", action="store_true", help="force channels-last for sightline")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--side", choices=["plain", "sightline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 64, 8, 3, 1
    if args.side:
        return _side(args)
    argv = ["--model", args.model, "--size", str(args.size), "--batch", str(args.batch),
            "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.precision:
        argv += ["--precision", args.precision]
    if args.channels_last:
        argv.append("--channels-last")
    runs: dict[str, list[dict]] = {"plain": [], "sightline": []}
    for side in ("plain", "sightline", "sightline", "plain"):
        runs[side].append(_spawn(side, argv))
        print(f"  {side:<9} run: {runs[side][-1]['images_per_s']:.1f} images/s", flush=True)
    plain = max(r["images_per_s"] for r in runs["plain"])
    ours = max(r["images_per_s"] for r in runs["sightline"])
    info = runs["sightline"][0]
    peak = max(r["peak_rss_gb"] for r in runs["sightline"])
    print(f"device={info['device']} threads={info['threads']} model={args.model} size={args.size} "
          f"batch={args.batch} sightline precision={info['precision']} channels_last={info['channels_last']}")
    print(f"plain timm+PyTorch loop: {plain:.1f} images/s (best of 2 fresh processes)")
    print(f"sightline training step: {ours:.1f} images/s (best of 2 fresh processes)")
    print(f"ratio sightline/plain: {ours / plain:.3f} (target >= 1.0)")
    print(f"peak RSS of a sightline training process: {peak:.2f} GB (target <= 4 GB for Lite0 224 px batch 32)")
    if "peak_cuda_gb" in info:
        print(f"peak CUDA memory: {max(r['peak_cuda_gb'] for r in runs['sightline']):.2f} GB")


if __name__ == "__main__":
    main()
