"""Scan a dataset and make the data side of a run: the preprocessing at the chosen input size, the data module
with its decoded-image cache, and why each automatic choice was made (`Prepared.choices`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sightline.data.datasets import PRODUCTION
from sightline.decision import UNKNOWN_LABEL
from sightline.errors import DatasetError
from sightline.train.blocks import build_system, single_process, training_precision, unreadable_images_hint
from sightline.train.config import TrainConfig

__all__ = ["prepare", "Prepared"]


@dataclass
class Prepared:
    """What `prepare` made for a config: the scanned dataset, its preprocessing, the data module, the balance
    rule, and every automatic choice with why (`choices`: name -> {"value", "why", ...})."""

    dataset: Any
    pre: Any
    dm: Any
    balance: str
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)


def _scan(data_dir: str | Path, cfg: TrainConfig) -> tuple[Any, str]:
    """The dataset (split layout, at least two classes in train, a val split) and its balance rule."""
    from sightline.data.balance import choose_balance
    from sightline.data.datasets import scan_dataset

    dataset = scan_dataset(data_dir, require_splits=("train", "val"))
    counts = {c: n for c, n in dataset.class_counts("train").items()}
    present = [c for c in dataset.classes if counts.get(c, 0) > 0]
    if len(present) < 2:
        raise DatasetError(f"dataset '{dataset.root}' has images of only {present or 'no'} class in train/; "
                           "a classifier needs at least two classes.")
    if not dataset.split("val"):
        raise DatasetError(f"dataset '{dataset.root}' has an empty val/ split; run `sightline data split`.")
    if UNKNOWN_LABEL in dataset.classes:  # before any work: the review queue gives this label to no class
        raise DatasetError(f"dataset '{dataset.root}' has a class named '{UNKNOWN_LABEL}', the label reviewers give "
                           "an image no class fits; rename that folder (e.g. 'unknown_object') in every split.")
    balance = choose_balance({c: counts.get(c, 0) for c in dataset.classes if counts.get(c, 0) > 0}, cfg.balance)
    return dataset, balance


def _datamodule(dataset: Any, cfg: TrainConfig, pre: Any, balance: str, *, cache_ram: int | None,
                train: Sequence[Any] | None = None, val: Sequence[Any] | None = None) -> Any:
    from sightline.train.datamodule import SightlineDataModule

    return SightlineDataModule(
        dataset.split("train") if train is None else train, dataset.split("val") if val is None else val,
        dataset.classes, pre, test=dataset.split("test") if train is None else (),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, augment=cfg.augment, vflip=cfg.vflip,
        balance=balance, seed=cfg.seed, cache_ram=cache_ram,
    )


def _cache_budget(cfg: TrainConfig, say: Callable[[str], None]) -> tuple[int | None, str]:
    """Bytes of memory for decoded images (None: no cache) and how that was decided."""
    from sightline.train.cache import DEFAULT_RAM_SHARE, available_memory, ram_budget

    if cfg.cache_ram == "off":
        return None, "off (cache_ram: off): every image is decoded every epoch"
    budget = ram_budget(cfg.cache_ram)
    if budget == 0:
        say("cache_ram=0: no decoded image is kept in memory; they go to a temporary disk cache instead (still "
            "decoded only once); give --cache-ram 2GB (or auto) to keep them in memory, or off to decode every epoch.")
        return 0, "0: a temporary disk cache only"
    share = (f"{DEFAULT_RAM_SHARE:.0%} of the {available_memory() / 1e9:.1f} GB available" if cfg.cache_ram == "auto"
             else f"cache_ram={cfg.cache_ram}")
    return budget, f"{budget / 1e9:.2f} GB of memory ({share}), then a temporary disk cache"


def _spread(samples: Sequence[Any], n: int) -> list[Any]:
    """At most `n` of `samples`, each class keeping its share (at least one), picked at even steps through the
    class's files in name order: the same probe set on every run, no random state involved."""
    if len(samples) <= n:
        return list(samples)
    by_class: dict[str, list[Any]] = {}
    for s in sorted(samples, key=lambda s: s.relpath):
        by_class.setdefault(s.label, []).append(s)
    chosen: list[Any] = []
    for items in by_class.values():
        k = min(len(items), max(1, round(n * len(items) / len(samples))))
        chosen += [items[int(i * len(items) / k)] for i in range(k)]
    return chosen


def _probe(dataset: Any, cfg: TrainConfig, balance: str, cache_ram: int | None) -> Callable[[int], dict[str, float]]:
    """probe(size): one short fine-tune from the pretrained weights at `size` (a pass over at most PROBE_IMAGES
    training images, stratified), then accuracy and loss on at most PROBE_IMAGES validation images."""
    import lightning as L

    from sightline.models.factory import default_preprocessing
    from sightline.train.input_size import PROBE_IMAGES

    train = _spread(dataset.split("train"), PROBE_IMAGES)
    val = _spread(dataset.split("val"), PROBE_IMAGES)

    def probe(size: int) -> dict[str, float]:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        # One epoch with a short warm-up: the pass should learn, not spend itself warming up.
        probe_cfg = cfg.with_overrides(input_size=size, epochs=1, warmup_epochs=0.1,
                                       lr=cfg.lr if cfg.lr != "auto" else 1e-3)
        pre = default_preprocessing(cfg.model, input_size=size, crop_pct=cfg.crop_pct)
        dm = _datamodule(dataset, probe_cfg, pre, balance, cache_ram=cache_ram, train=train, val=val)
        try:
            system = build_system(probe_cfg, dataset.classes, dm)
            trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, precision=training_precision(cfg),
                                max_epochs=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
            with unreadable_images_hint(dataset):
                trainer.fit(system, datamodule=dm)  # one epoch, validated at its end
            result = trainer.callback_metrics
        finally:
            dm.close()
        return {"val_acc": float(result["val_acc"]), "val_loss": float(result["val_loss"])}

    return probe


def prepare(data_dir: str | Path, cfg: TrainConfig, *, say: Callable[[str], None] | None = None,
            probe: bool = True) -> Prepared:
    """Scan the data and build the preprocessing and data module for `cfg`, making its automatic choices (input
    size, image cache; `probe=False` chooses the input size without the short probe). Raises DatasetError for a
    dataset that cannot be trained on."""
    from sightline.models.factory import default_preprocessing
    from sightline.train.input_size import choose_input_size

    say = say or (lambda message: None)
    dataset, balance = _scan(data_dir, cfg)
    # not images, unreadable, refused, beside the splits: left out of training, and said so; production/ is left
    # out by design (feedback export's held-out images for `sightline challenge`), so it is no warning
    unused = [s for s in dataset.skipped if s["path"] != PRODUCTION]
    if unused:
        first = unused[0]
        say(f"warning: {len(unused)} file(s) or folder(s) under {data_dir} are not used (e.g. {first['path']}: "
            f"{first['reason']}); `sightline data audit {data_dir}` lists them all")
    for split, why in (("train", "the model cannot learn them"),
                       ("val", "early stopping, calibration and thresholds never see them")):
        lacking = [c for c, n in dataset.class_counts(split).items() if n == 0]
        if lacking:  # trained on anyway (a re-split may be impossible), but never in silence
            say(f"warning: {split}/ has no image of {', '.join(lacking)}: {why}; add {split} images of them or "
                "re-split the data (`sightline data split`)")
    from sightline.data.audit import similar_class_names

    # 'Ants' in val/ beside 'ants' in train/ was only 'val/ has no image of ants' and 'train/ has no image of Ants',
    # each true, neither naming the cause: one class spelled two ways, trained as two
    for finding in similar_class_names(dataset.classes):
        names = " and ".join(repr(c) for c in finding.detail["classes"])
        say(f"warning: classes {names} differ only in case, spacing or encoding and are trained as different "
            "classes; if they are one, give their folders one name")
    cache_ram, cache_why = _cache_budget(cfg, say)
    default = default_preprocessing(cfg.model).input_size
    run_probe = probe and cfg.input_size == "auto" and single_process(cfg)
    val_counts = dataset.class_counts("val")
    size = choose_input_size(cfg.input_size, default, dataset.split("train"),
                             probe=_probe(dataset, cfg, balance, cache_ram) if run_probe else None,
                             n_val=min(len(dataset.split("val")), 256),
                             chance=max(val_counts.values()) / n if (n := sum(val_counts.values())) else None)
    say(f"input size {size.why}")
    pre = default_preprocessing(cfg.model, input_size=size.size, crop_pct=cfg.crop_pct)
    dm = _datamodule(dataset, cfg, pre, balance, cache_ram=cache_ram)
    choices = {"input_size": {"value": size.size, "why": size.why, "native": size.native,
                              "probe": size.to_dict()["probe"]},
               "cache": {"value": cfg.cache_ram, "why": cache_why}}
    return Prepared(dataset, pre, dm, balance, choices)
