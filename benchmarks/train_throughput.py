"""Training throughput (images/s) of Sightline's training step (Lightning + ClassifierSystem) against a plain timm +
PyTorch loop with the same model, resolution, batch size and optimiser, in one process; plus peak RSS memory.

Targets (issue 3): ratio >= 1.0; peak memory for Lite0 at 224 px, batch 32 <= 4 GB (CPU).
Data are random tensors held in memory so both sides measure the training step, not JPEG decoding.

    python benchmarks/train_throughput.py                      # full: Lite0, 224 px, batch 32, 20 timed steps
    python benchmarks/train_throughput.py --quick              # 64 px, batch 8, 3 steps: checks the script runs
    python benchmarks/train_throughput.py --precision bf16-mixed --channels-last   # the CPU/GPU variants
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from sightline.models.factory import create_model


def plain_loop(args: argparse.Namespace, device: str) -> float:
    model = create_model(args.model, 2, weights="auto").to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 2, (args.batch,), device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - start)


def sightline_step(args: argparse.Namespace, device: str) -> float:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from sightline.train.system import ClassifierSystem

    class Timer(L.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):  # noqa: ANN001
            if batch_idx == args.warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module):  # noqa: ANN001
            if device == "cuda":
                torch.cuda.synchronize()
            self.end = time.perf_counter()

    n = (args.warmup + args.steps) * args.batch
    data = TensorDataset(torch.randn(n, 3, args.size, args.size), torch.randint(0, 2, (n,)))
    model = create_model(args.model, 2, weights="auto")
    system = ClassifierSystem(model, 2, lr=1e-4, channels_last=args.channels_last)
    timer = Timer()
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=1,
                        precision=args.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(system, DataLoader(data, batch_size=args.batch, shuffle=True, pin_memory=device == "cuda"))
    return args.steps * args.batch / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 64, 8, 3, 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    plain = plain_loop(args, device)
    ours = sightline_step(args, device)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} size={args.size} "
          f"batch={args.batch} precision={args.precision} channels_last={args.channels_last}")
    print(f"plain timm+PyTorch loop: {plain:.1f} images/s")
    print(f"sightline training step: {ours:.1f} images/s")
    print(f"ratio sightline/plain: {ours / plain:.3f} (target >= 1.0)")
    print(f"peak RSS of this process: {peak_gb:.2f} GB (target <= 4 GB for Lite0 224 px batch 32 on CPU)")
    if device == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 1024**3:.2f} GB")


if __name__ == "__main__":
    main()
