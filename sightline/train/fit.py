"""`train`: a dataset folder in the split layout -> a RUN folder with the resolved config, logs, the best
checkpoint, metrics and `RUN/bundle/` (DESIGN.md, "Runs and bundles"). Also `sanity_check` (catch bugs before a
long run) and `train_seeds` (mean +- std over seeds). The data side is `prepare.py`, the system and Trainer
`blocks.py`; both are shared with `distill`.

RUN/
  config.yaml        resolved TrainConfig; why each automatic choice was made, as comments at the top
  lr_find.png        with lr='auto': the learning-rate range test
  metrics.json       validation metrics of the best checkpoint (split, n_images), best epoch, time, provenance
  logs/tensorboard/  TensorBoard events;  logs/csv/metrics.csv  the same as CSV
  checkpoints/best.ckpt
  bundle/            model.json + weights.safetensors
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sightline.errors import UserInputError
from sightline.train.blocks import (build_system, build_trainer, checkpoint_epoch, choice_printer, fit_system,
                                    load_best, quiet_lightning, resolve_config, single_process,
                                    training_precision, unreadable_images_hint)
from sightline.train.config import TrainConfig
from sightline.train.prepare import Prepared, prepare

__all__ = ["train", "sanity_check", "train_seeds"]


def _resolve_lr(cfg: TrainConfig, prepared: Prepared, run: Path, say: Callable[[str], None]) -> TrainConfig:
    """cfg with lr='auto' replaced by the range test's suggestion (RUN/lr_find.png); unchanged otherwise."""
    if cfg.lr != "auto":
        prepared.choices["lr"] = {"value": cfg.lr, "why": f"{cfg.lr:g}, the lr setting (--lr auto runs a range test)"}
        return cfg
    if not single_process(cfg):
        raise UserInputError("lr='auto' runs its range test in one process; run `sightline lr-find DATA` first and "
                             "pass the suggested --lr to the multi-device run.")
    from sightline.train.lr_find import lr_range_test

    system = build_system(cfg.with_overrides(lr=1e-3), prepared.dataset.classes, prepared.dm)
    finding = lr_range_test(system, prepared.dm, steps=cfg.lr_find_steps, accelerator=cfg.accelerator,
                            precision=training_precision(cfg), out=run)
    why = f"range test over {finding.steps} steps ({finding.rule}); plot {finding.plot}"
    say(f"learning rate {finding.suggestion:.2e}: {why}")
    prepared.choices["lr"] = {"value": finding.suggestion, "why": why}
    return cfg.with_overrides(lr=finding.suggestion)


def _adapt_to_small_images(cfg: TrainConfig, prepared: Prepared, say: Callable[[str], None]) -> TrainConfig:
    """cfg with SMALL_IMAGE_RECIPE's bounds applied when the training images are smaller than the model's
    pretrained size and are upsampled to be trained (cfg.small_image_recipe, pretrained weights); unchanged
    otherwise: photos at the pretrained size, or small images trained at or below their own size (the demo's
    128 px surfaces at 112 px). What changed, and why, goes into prepared.choices["small_images"]."""
    from sightline.models.factory import default_preprocessing
    from sightline.train.config import SMALL_IMAGE_RECIPE
    from sightline.train.input_size import small_images

    native, size = prepared.choices["input_size"].get("native"), prepared.pre.input_size
    default = default_preprocessing(cfg.model).input_size
    if (not cfg.small_image_recipe or str(cfg.weights) == "none" or not small_images(native, default)
            or size <= native):
        return cfg
    bound = SMALL_IMAGE_RECIPE
    wanted = {"backbone_lr_scale": max(cfg.backbone_lr_scale, bound["backbone_lr_scale"]),
              "warmup_epochs": min(cfg.warmup_epochs, bound["warmup_epochs"]),
              "patience": max(cfg.patience, int(bound["patience"]))}
    changes = {k: v for k, v in wanted.items() if v != getattr(cfg, k)}
    done = ", ".join(f"{k} {getattr(cfg, k):g} -> {v:g}" for k, v in changes.items()) or "the config's values already"
    why = (f"{native} px training images upsampled to {size} px (the model's pretrained size is {default} px): far "
           f"from what its ImageNet weights saw, so the backbone moves faster and stopping waits longer ({done}; "
           f"bounds {', '.join(f'{k} {v:g}' for k, v in bound.items())}; small_image_recipe: false keeps the "
           "config's values)")
    prepared.choices["small_images"] = {"value": changes, "why": why}
    say(f"small images: {why}")
    return cfg.with_overrides(**changes) if changes else cfg


def _resolve_hardware(cfg: TrainConfig, prepared: Prepared, say: Callable[[str], None]) -> TrainConfig:
    """cfg with precision "auto" and channels_last None resolved (sightline.train.hardware.resolve_hardware: timed
    on a CPU, the hardware rule elsewhere); the choice goes into prepared.choices["hardware"]."""
    from sightline.train.hardware import resolve_hardware

    if cfg.precision != "auto" and cfg.channels_last is not None:
        return cfg
    precision, channels_last, why = resolve_hardware(cfg, len(prepared.dataset.classes),
                                                     input_size=prepared.pre.input_size)
    prepared.choices["hardware"] = {"value": {"precision": precision, "channels_last": channels_last}, "why": why}
    say(f"precision {precision}, {'channels-last' if channels_last else 'contiguous'}: {why}")
    return cfg.with_overrides(precision=precision, channels_last=channels_last)


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    **overrides: Any,
) -> Path:
    """Fine-tune `config.model` on DATA/train, stop when DATA/val has saturated (or the time budget is spent)
    and keep the best checkpoint on DATA/val.

    Automatic choices (input size, image cache, learning rate with lr='auto', planned epochs with a time
    budget) are printed when `progress`, written as comments at the top of RUN/config.yaml (whose values are
    the resolved ones), and stored in RUN/metrics.json["choices"]. `callbacks`: extra Lightning callbacks.

    Returns the RUN folder (`out_dir`); `RUN/bundle/` holds the best weights. Bad data (missing val split, one
    class) raises DatasetError; an unknown model or unfit weights raise ModelError.

    Example:
        >>> run = train("DATA", "runs/r1", model="test_efficientnet", weights="none", epochs=1, input_size=32)
        >>> load_bundle(run).metrics["val"]["accuracy"]
    """
    import lightning as L

    from sightline.bundle import Bundle, code_version
    from sightline.data.datasets import dataset_version, refuse_out_inside_splits
    from sightline.train.stopping import stop_reason

    started = time.perf_counter()
    say = choice_printer(progress)
    cfg = resolve_config(config, overrides)
    run = Path(out_dir)
    refuse_out_inside_splits(run, data_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with quiet_lightning(cfg):  # the input-size probe's Trainers too
        prepared = prepare(data_dir, cfg, say=say)
        dataset, pre, dm, balance = prepared.dataset, prepared.pre, prepared.dm, prepared.balance
        run.mkdir(parents=True, exist_ok=True)
        try:
            with unreadable_images_hint(dataset):
                cache = dm.fill_cache()
            if cache:
                line = "; ".join(f"{name}: {stats.describe()}" for name, stats in cache.items())
                prepared.choices["cache"]["filled"] = {name: asdict(stats) for name, stats in cache.items()}
                say(f"image cache ({prepared.choices['cache']['why']}): {line}")
            cfg = _adapt_to_small_images(cfg, prepared, say)
            cfg = cfg.with_overrides(input_size=pre.input_size)
            # precision and memory format are this machine's, not the run's settings: the files keep them as given (a
            # retrain elsewhere resolves them again) and the choice is recorded with the others
            given = {"precision": cfg.precision, "channels_last": cfg.channels_last}
            cfg = _resolve_hardware(cfg, prepared, say)
            cfg = _resolve_lr(cfg, prepared, run, say)
            stop_why = (f"at most {cfg.epochs} epochs; stop when {cfg.monitor} has not improved for {cfg.patience} "
                        f"epoch{'s' if cfg.patience != 1 else ''} or reaches its ceiling"
                        + (f"; time budget {cfg.time_budget}: epochs planned after the first"
                           if cfg.time_budget else ""))
            prepared.choices["stopping"] = {"value": cfg.epochs, "why": stop_why}
            say(f"stopping: {stop_why}")
            # First: a run that crashes or is interrupted still says how it was made. Values resolved, choices as
            # comments.
            cfg.with_overrides(**given).save_yaml(run / "config.yaml",
                                                  comments=[f"{k}: {v['why']}" for k, v in prepared.choices.items()])
            L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same weights whatever ran before
            system = build_system(cfg, dataset.classes, dm)
            weights_info = getattr(system.model, "sightline_weights", {"source": str(cfg.weights), "notes": []})
            parts = build_trainer(cfg, run, dm, progress=progress, started=started, say=say, callbacks=callbacks)
            trainer, checkpoint = parts.trainer, parts.checkpoint
            fit_s = fit_system(trainer, system, dm, dataset)

            best = checkpoint.best_model_path
            bf16_one_device = training_precision(cfg) != "32-true" and trainer.world_size == 1
            if trainer.world_size == 1 and (not best or Path(best).is_file()):
                # One process, a one-file checkpoint: one read gives the best weights and their epoch.
                best_epoch = load_best(system, best)
                results = None if bf16_one_device else trainer.validate(system, datamodule=dm, verbose=False)[0]
            else:
                # Several processes (or a strategy's checkpoint folder): the strategy loads its own format.
                results = trainer.validate(system, datamodule=dm, ckpt_path=best if best else None, verbose=False)[0]
                if not trainer.is_global_zero:
                    return run
                best_epoch = checkpoint_epoch(best)
            if bf16_one_device:
                # The bundle's numbers must be what deployment (fp32 PyTorch / ONNX) sees, not the bf16 autocast ones:
                # on one device this is the only validation of the best weights.
                fp32 = L.Trainer(accelerator=cfg.accelerator, devices=1, precision="32-true", logger=False,
                                 enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
                results = fp32.validate(system, datamodule=dm, verbose=False)[0]
        finally:
            dm.close()
    assert results is not None
    epochs_run = int(trainer.current_epoch)
    stopped = stop_reason(parts.stopping, epochs_run=epochs_run, max_epochs=cfg.epochs, budget=parts.budget)
    prepared.choices["stopping"]["stopped"] = stopped
    say(f"stopped: {stopped}")
    if parts.budget is not None:
        prepared.choices["time_budget"] = {"value": cfg.time_budget, **parts.budget.summary()}
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
        "epochs_run": epochs_run,
        "fit_seconds": round(fit_s, 1),
        "run_seconds": round(time.perf_counter() - started, 1),
        "train_images": len(dm.train_set),
        "class_counts_train": dataset.class_counts("train"),
        "balance": balance,
        "seed": cfg.seed,
        "dataset_version": version,
        "weights": weights_info,
        "precision": training_precision(cfg),  # training precision; the val figures above are fp32 on one device
        "choices": prepared.choices,
    }
    (run / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    bundle = Bundle(
        architecture=cfg.model,
        classes=list(dataset.classes),
        preprocessing=pre,
        metrics={"val": val},
        dataset_version=version,
        code_version=code_version(),
        extra={"train": {"data_dir": str(dataset.root), "config": cfg.with_overrides(**given).to_dict(),
                         "seed": cfg.seed, "best_epoch": best_epoch, "balance": balance,
                         "weights_source": weights_info["source"], "weights_notes": weights_info["notes"],
                         "fit_seconds": round(fit_s, 1), "choices": prepared.choices}},
    )
    if (run / "bundle").is_dir():
        # An earlier run's bundle: its ONNX graphs, model card and reference profile belong to the old weights;
        # left beside the new model.json, predict and serve would answer with the old graph under the new classes.
        shutil.rmtree(run / "bundle")
        say(f"replaced the bundle of an earlier run in {run / 'bundle'} (with its exports and model card)")
    bundle.save(run / "bundle", state_dict=system.model.state_dict())
    if cfg.reference:
        _write_reference(bundle, dataset, cfg, say)
    return run


def _write_reference(bundle: Any, dataset: Any, cfg: TrainConfig, say: Any) -> None:
    """The monitor's reference profile of the new bundle (at temperature 1: `evaluate` refreshes it at the fitted
    one). A dataset the profile cannot be built from is said in one line; the bundle stays usable without it.

    The profile's draws (bank sample, stand-in outliers) use evaluate's default seed, not the training seed, so
    `sightline evaluate` refreshes the profile of every seed of `train --seeds N` from val alone, reusing the bank
    and the stand-ins' outputs stored here, instead of scoring them again."""
    from sightline.errors import DatasetError
    from sightline.evaluate.options import EvaluateOptions
    from sightline.evaluate.reference import build_bundle_reference

    try:
        profile = build_bundle_reference(bundle, dataset, seed=EvaluateOptions().seed,
                                         device="cpu" if cfg.accelerator == "cpu" else None)
    except DatasetError as exc:
        say(f"no reference profile ({exc}); the bundle works without it, and `sightline evaluate` writes one when "
            "the data allows")
        return
    choice = profile.ood_choice
    if choice is not None:
        say(f"reference profile written: open-set score: {choice.score} (chosen by {choice.chosen_by}); "
            f"{profile.meta.get('seconds', 0):.0f} s")


def sanity_check(data_dir: str | Path, *, config: TrainConfig | None = None, max_steps: int = 40,
                 **overrides: Any) -> dict[str, Any]:
    """Cheap checks before a long run: 2 batches through train and validation (Lightning fast_dev_run), then the
    model must fit 2 fixed batches (no augmentation) to 100 % training accuracy within `max_steps` steps.

    Returns {"passed": bool, "steps": int, "loss_start": float, "loss_end": float, "accuracy": float}."""
    import lightning as L
    import torch

    cfg = resolve_config(config, overrides)
    # A few batches: no image cache, no input-size probe, no range test (their defaults stand in).
    cfg = cfg.with_overrides(cache_ram="off", lr=1e-3 if cfg.lr == "auto" else cfg.lr)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prepared = prepare(data_dir, cfg, probe=False)
    dataset, pre, dm = prepared.dataset, prepared.pre, prepared.dm
    system = build_system(cfg, dataset.classes, dm)
    with quiet_lightning():  # one process: the result below says what ran
        trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, fast_dev_run=2, precision=training_precision(cfg),
                            enable_progress_bar=False, enable_model_summary=False, logger=False)
        trainer.fit(system, datamodule=dm)

    # Overfit 2 fixed batches: a model/loss/label bug shows as a loss that does not fall.
    from sightline.train.datamodule import ImageFolderSplit

    fixed = ImageFolderSplit(dataset.split("train"), dataset.classes, pre, train=False)
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

    cfg = resolve_config(config, overrides)
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
