"""`train`: a dataset folder in the split layout -> a RUN folder with the resolved config, logs, the best
checkpoint, metrics and `RUN/bundle/` (DESIGN.md, "Runs and bundles"). Also `sanity_check` (catch bugs before a
long run) and `train_seeds` (mean +- std over seeds).

RUN/
  config.yaml        resolved TrainConfig
  metrics.json       validation metrics of the best checkpoint (split, n_images), best epoch, time, provenance
  logs/tensorboard/  TensorBoard events;  logs/csv/metrics.csv  the same as CSV
  checkpoints/best.ckpt
  bundle/            model.json + weights.safetensors
"""
from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sightline.errors import DatasetError, ImageError, one_line
from sightline.train.config import TrainConfig

__all__ = ["train", "sanity_check", "train_seeds", "prepare"]

log = logging.getLogger(__name__)


def _resolve(config: TrainConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    from sightline.models.factory import resolve_model_name

    cfg = (config or TrainConfig()).with_overrides(**overrides)
    return cfg.with_overrides(model=resolve_model_name(cfg.model))  # 'lite0' -> 'tf_efficientnet_lite0'; typos fail here


def prepare(data_dir: str | Path, cfg: TrainConfig) -> tuple[Any, Any, Any, str]:
    """Scan the data and build (dataset, preprocessing, datamodule, balance) for `cfg`. Raises DatasetError."""
    from sightline.data.balance import choose_balance
    from sightline.data.datasets import scan_dataset
    from sightline.models.factory import default_preprocessing
    from sightline.train.datamodule import SightlineDataModule

    dataset = scan_dataset(data_dir, require_splits=("train", "val"))
    train_samples, val_samples = dataset.split("train"), dataset.split("val")
    counts = {c: n for c, n in dataset.class_counts("train").items()}
    present = [c for c in dataset.classes if counts.get(c, 0) > 0]
    if len(present) < 2:
        raise DatasetError(f"dataset '{dataset.root}' has images of only {present or 'no'} class in train/; "
                           "a classifier needs at least two classes.")
    if not val_samples:
        raise DatasetError(f"dataset '{dataset.root}' has an empty val/ split; run `sightline data split`.")
    balance = choose_balance({c: counts.get(c, 0) for c in dataset.classes if counts.get(c, 0) > 0}, cfg.balance)
    pre = default_preprocessing(cfg.model, input_size=cfg.input_size, crop_pct=cfg.crop_pct)
    dm = SightlineDataModule(
        train_samples, val_samples, dataset.classes, pre, test=dataset.split("test"),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, augment=cfg.augment, vflip=cfg.vflip,
        balance=balance, seed=cfg.seed,
    )
    return dataset, pre, dm, balance


def _precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    # bf16 autocast pays off where the hardware has bf16 units: GPUs that support it, and CPUs with AMX or
    # AVX512-BF16 (Lite0 224 px batch 32 on a 2-core AMX Xeon: 6.9 -> 9.2 images/s with channels-last,
    # benchmarks/train_throughput.py). Elsewhere on CPU bf16 is emulated and slower.
    if _uses_cuda(cfg):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cfg.accelerator in ("auto", "cpu") and _cpu_has_bf16() else "32-true"


def _uses_cuda(cfg: TrainConfig) -> bool:
    import torch

    return cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _cpu_has_bf16() -> bool:
    """Native bf16 matrix units on this CPU (torch.cpu's capability probes; private API, hence the getattr)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def _channels_last(cfg: TrainConfig) -> bool:
    if cfg.channels_last is not None:
        return cfg.channels_last
    # channels-last is what oneDNN's bf16 kernels and cuDNN's tensor cores want; in fp32 on CPU it does not pay.
    return _uses_cuda(cfg) or _precision(cfg) == "bf16-mixed"


def _devices(value: str) -> Any:
    value = str(value).strip()
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return int(value)


def _build_system(cfg: TrainConfig, classes: list[str], dm: Any, *, system_cls: Any = None, **extra: Any) -> Any:
    """The model of `cfg` inside its LightningModule (`system_cls`, default ClassifierSystem, also gets `extra`)."""
    from sightline.models.factory import create_model
    from sightline.train.system import ClassifierSystem

    model = create_model(cfg.model, len(classes), weights=cfg.weights, drop_rate=cfg.drop_rate,
                         drop_path_rate=cfg.drop_path_rate)
    scale = cfg.backbone_lr_scale if str(cfg.weights) != "none" else 1.0  # nothing to preserve from scratch
    return (system_cls or ClassifierSystem)(
        model, len(classes), lr=cfg.lr, backbone_lr_scale=scale, weight_decay=cfg.weight_decay,
        schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs, label_smoothing=cfg.label_smoothing,
        freeze_epochs=cfg.freeze_epochs, monitor=cfg.monitor, class_weights=dm.class_weights(),
        channels_last=_channels_last(cfg), **extra,
    )


def _trainer(cfg: TrainConfig, run: Path, dm: Any, *, progress: bool) -> tuple[Any, Any]:
    """The Lightning Trainer of a run (precision, devices, early stopping, best checkpoint, TensorBoard + CSV
    logs) and its ModelCheckpoint. A best*.ckpt left in RUN/checkpoints by an earlier run is removed first."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    ckpt_dir = run / "checkpoints"
    for old in ckpt_dir.glob("best*.ckpt"):
        old.unlink()  # a re-run into the same folder replaces the old best, never competes with it
    mode = "min" if cfg.monitor == "val_loss" else "max"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.monitor, mode=mode, save_top_k=1,
                                 auto_insert_metric_name=False)
    callbacks: list[Any] = [checkpoint, EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience),
                            LearningRateMonitor(logging_interval="epoch")]
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=_devices(cfg.devices), num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=_precision(cfg), max_epochs=cfg.epochs,
        max_time=timedelta(seconds=cfg.max_time_s) if cfg.max_time_s else None,
        callbacks=callbacks, deterministic=cfg.deterministic, default_root_dir=run,
        logger=[TensorBoardLogger(run, name="logs", version="tensorboard", default_hp_metric=False),
                CSVLogger(run, name="logs", version="csv")],
        log_every_n_steps=max(1, min(10, len(dm.train_set) // cfg.batch_size)),
        num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=progress,
    )
    return trainer, checkpoint


def _fit(trainer: Any, system: Any, dm: Any, dataset: Any) -> float:
    """trainer.fit, with a one-line answer for an image that fails to decode mid-run; returns its seconds."""
    started = time.perf_counter()
    try:
        trainer.fit(system, datamodule=dm)
    except ImageError as exc:  # a file whose header is fine but whose pixels are not: say what to do
        raise type(exc)(f"{one_line(exc)}. Run `sightline data audit {dataset.root} --quarantine` to move "
                        "unreadable files aside, then train again.") from None
    return time.perf_counter() - started


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Fine-tune `config.model` on DATA/train, early-stop and keep the best checkpoint on DATA/val.

    Returns the RUN folder (`out_dir`); `RUN/bundle/` holds the best weights. Bad data (missing val split, one
    class) raises DatasetError; an unknown model or unfit weights raise ModelError.

    Example:
        >>> run = train("DATA", "runs/r1", model="test_efficientnet", weights="none", epochs=1, input_size=32)
        >>> load_bundle(run).metrics["val"]["accuracy"]
    """
    import lightning as L

    from sightline.bundle import Bundle, code_version
    from sightline.data.datasets import dataset_version

    cfg = _resolve(config, overrides)
    run = Path(out_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dataset, pre, dm, balance = prepare(data_dir, cfg)
    system = _build_system(cfg, dataset.classes, dm)
    weights_info = getattr(system.model, "sightline_weights", {"source": str(cfg.weights), "notes": []})

    run.mkdir(parents=True, exist_ok=True)
    cfg.save_yaml(run / "config.yaml")  # first: a run that crashes or is interrupted still says how it was made
    trainer, checkpoint = _trainer(cfg, run, dm, progress=progress)
    fit_s = _fit(trainer, system, dm, dataset)

    best = checkpoint.best_model_path
    bf16_one_device = _precision(cfg) != "32-true" and trainer.world_size == 1
    if trainer.world_size == 1 and (not best or Path(best).is_file()):
        # One process, a one-file checkpoint: one read gives the best weights and their epoch.
        best_epoch = _load_best(system, best)
        results = None if bf16_one_device else trainer.validate(system, datamodule=dm, verbose=False)[0]
    else:
        # Several processes (or a strategy's checkpoint folder): the strategy loads its own format.
        results = trainer.validate(system, datamodule=dm, ckpt_path=best if best else None, verbose=False)[0]
        if not trainer.is_global_zero:
            return run
        best_epoch = _best_epoch(best)
    if bf16_one_device:
        # The bundle's numbers must be what deployment (fp32 PyTorch / ONNX) sees, not the bf16 autocast ones:
        # on one device this is the only validation of the best weights.
        fp32 = L.Trainer(accelerator=cfg.accelerator, devices=1, precision="32-true", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        results = fp32.validate(system, datamodule=dm, verbose=False)[0]
    assert results is not None
    val = {
        "split": "val",
        "n_images": len(dm.val_set),
        "accuracy": float(results["val_acc"]),
        "macro_f1": float(results["val_macro_f1"]),
        "loss": float(results["val_loss"]),
    }
    version = dataset_version(dataset)
    summary = {
        "val": val,
        "best_epoch": best_epoch,
        "epochs_run": int(trainer.current_epoch),
        "fit_seconds": round(fit_s, 1),
        "train_images": len(dm.train_set),
        "class_counts_train": dataset.class_counts("train"),
        "balance": balance,
        "seed": cfg.seed,
        "dataset_version": version,
        "weights": weights_info,
        "precision": _precision(cfg),  # training precision; the val figures above are fp32 on one device
    }
    (run / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    bundle = Bundle(
        architecture=cfg.model,
        classes=list(dataset.classes),
        preprocessing=pre,
        metrics={"val": val},
        dataset_version=version,
        code_version=code_version(),
        extra={"train": {"data_dir": str(dataset.root), "config": cfg.to_dict(), "seed": cfg.seed, "best_epoch": best_epoch, "balance": balance,
                         "weights_source": weights_info["source"], "weights_notes": weights_info["notes"],
                         "fit_seconds": round(fit_s, 1)}},
    )
    bundle.save(run / "bundle", state_dict=system.model.state_dict())
    return run


def _best_epoch(path: str) -> int | None:
    """The epoch (0-based) a Lightning checkpoint was saved at; None without a checkpoint or when unreadable."""
    if not path:
        return None
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (KeyError, OSError, RuntimeError):
        return None


def _load_best(system: Any, path: str) -> int | None:
    """Load a one-process Lightning checkpoint into `system` (as `validate(ckpt_path=...)` would: the strict
    state dict) from one read, and return its epoch. No checkpoint (`path` empty): the weights stay, None."""
    if not path:
        return None
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # what Lightning's loader does for a local file
    system.load_state_dict(ckpt["state_dict"])
    epoch = ckpt.get("epoch")
    return int(epoch) if epoch is not None else None


def sanity_check(data_dir: str | Path, *, config: TrainConfig | None = None, max_steps: int = 40,
                 **overrides: Any) -> dict[str, Any]:
    """Cheap checks before a long run: 2 batches through train and validation (Lightning fast_dev_run), then the
    model must fit 2 fixed batches (no augmentation) to 100 % training accuracy within `max_steps` steps.

    Returns {"passed": bool, "steps": int, "loss_start": float, "loss_end": float, "accuracy": float}."""
    import lightning as L
    import torch

    cfg = _resolve(config, overrides)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dataset, pre, dm, _ = prepare(data_dir, cfg)
    system = _build_system(cfg, dataset.classes, dm)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, fast_dev_run=2, precision=_precision(cfg),
                        enable_progress_bar=False, enable_model_summary=False, logger=False)
    trainer.fit(system, datamodule=dm)

    # Overfit 2 fixed batches: a model/loss/label bug shows as a loss that does not fall.
    from sightline.train.datamodule import ImageFolderSplit, eval_transform

    fixed = ImageFolderSplit([], dataset.classes, eval_transform(pre))
    fixed.paths, fixed.targets = dm.train_set.paths, dm.train_set.targets
    bs = min(cfg.batch_size, 8)
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(fixed), generator=g)[: 2 * bs].tolist()
    batches = []
    for start in (0, bs):
        items = [fixed[i] for i in order[start:start + bs]]
        if items:
            batches.append((torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])))
    model = system.model.cpu().train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss_start = loss_end = float("nan")
    accuracy, step = 0.0, 0
    for step in range(1, max_steps + 1):
        correct = total = 0
        losses = []
        for x, y in batches:
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        loss_end = sum(losses) / len(losses)
        loss_start = loss_end if step == 1 else loss_start
        accuracy = correct / total
        if accuracy == 1.0 and loss_end < 0.5 * loss_start:
            break
    passed = accuracy == 1.0
    return {"passed": passed, "steps": step, "loss_start": round(loss_start, 4), "loss_end": round(loss_end, 4),
            "accuracy": accuracy, "images": sum(len(y) for _, y in batches)}


def train_seeds(data_dir: str | Path, out_dir: str | Path, *, seeds: int, config: TrainConfig | None = None,
                progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Train `seeds` runs (seed, seed+1, ...) into OUT/seed-<s>/ and write OUT/seeds.json with the validation
    metrics of each and their mean +- std (sample std, ddof=1): how much of a difference is noise."""
    import numpy as np

    cfg = _resolve(config, overrides)
    out = Path(out_dir)
    runs = []
    for i in range(seeds):
        seed = cfg.seed + i
        run = train(data_dir, out / f"seed-{seed}", config=cfg.with_overrides(seed=seed), progress=progress)
        val = json.loads((run / "metrics.json").read_text())["val"]
        runs.append({"seed": seed, "run": str(run), **val})
    summary: dict[str, Any] = {"split": "val", "n_images": runs[0]["n_images"], "seeds": runs}
    for key in ("accuracy", "macro_f1"):
        values = np.array([r[key] for r in runs], dtype=np.float64)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    (out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
