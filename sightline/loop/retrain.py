"""`retrain`: a challenger bundle trained on a new dataset version with the champion's settings (DESIGN.md, "The
loop": feedback export -> retrain -> challenge).

The settings are the training config recorded in the champion's bundle (model.json `extra.train.config`, the
resolved values it was trained with), else its RUN/config.yaml; options given here override them. Training is
sightline.train.fit.train, unchanged. The new bundle keeps the champion's name, gets the next version string and
records where it came from (`extra.retrain`).

Example:
    >>> result = retrain("runs/champion", "data-v2")            # -> runs/champion-retrain-<version>/
    >>> result["bundle"], result["dataset_version"]
"""
from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sightline.bundle import Bundle, load_bundle
from sightline.errors import BundleError, DatasetError, UserInputError

__all__ = ["champion_config", "next_version", "retrain"]

# In RUN while a retrain is under way: training writes RUN/bundle/ before its last step (the reference profile, some
# seconds), and the challenger's name, version and lineage are set after it, so a bundle beside this file is one that
# a Ctrl-C or a crash left unfinished (the champion's version string, no lineage) and a new retrain replaces it.
UNFINISHED = ".retrain-unfinished"


def _run_dir(bundle: Bundle) -> Path:
    assert bundle.path is not None
    return bundle.path.parent if bundle.path.name == "bundle" else bundle.path


def champion_config(bundle: Bundle) -> tuple[Any, str]:
    """(TrainConfig, where it was read) for the bundle's own training run. BundleError when neither model.json nor
    RUN/config.yaml records one."""
    from sightline.train.config import TrainConfig, load_config

    recorded = (bundle.extra.get("train") or {}).get("config") if isinstance(bundle.extra, dict) else None
    if isinstance(recorded, dict):
        return TrainConfig(**recorded), f"{bundle.path}/model.json (extra.train.config)"
    path = _run_dir(bundle) / "config.yaml"
    if path.is_file():
        return load_config(path), str(path)
    raise BundleError(f"{bundle.path} records no training config (model.json extra.train.config) and "
                      f"{path} does not exist; train the challenger with `sightline train NEWDATA --config FILE`.")


def refuse_run_folder(data: Path, instead: str) -> None:
    """UserInputError when --data is a RUN or bundle folder: read as a flat dataset, it was answered with advice to
    `sightline data split` it (a dataset of the run's files). `instead` says what --data should be."""
    if (data / "model.json").is_file() or (data / "bundle" / "model.json").is_file():
        raise UserInputError(f"'{data}' is a RUN or bundle folder, not a dataset; pass --data {instead}")


def next_version(version: str, taken: Collection[str] = ()) -> str:
    """The challenger's version string: trailing digits counted up ("1" -> "2", "1.4" -> "1.5"), else ".1" added;
    counted on past any of `taken` (the versions the registry already holds of this model: two retrains of one
    champion were both "2", and the service's answers named two models alike)."""
    found = re.search(r"(\d+)$", version)
    if found is None:
        candidate = f"{version}.1"
    else:
        candidate = version[: found.start()] + str(int(found.group(1)) + 1)
    return next_version(candidate, taken) if candidate in taken else candidate


def retrain(
    run: str | Path,
    data: str | Path,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    taken_versions: Collection[str] = (),
    **overrides: Any,
) -> dict[str, Any]:
    """Train a challenger on DATA (split layout; its test split should be the champion's frozen one) with the
    champion's settings plus `overrides` (TrainConfig fields), into OUT (default: RUN-retrain-<dataset version>
    beside the champion's RUN folder). The challenger's version string is the champion's counted up, past any of
    `taken_versions` (`next_version`).

    Refused with a one-line error, before any training and with nothing written: DATA's dataset version equals
    the champion's (no new labels), DATA's classes differ from the champion's, OUT already holds a bundle (other
    than one an interrupted retrain left unfinished, which is trained again) or is a file.

    Returns {"run", "bundle", "version", "champion", "champion_version", "champion_dataset_version",
    "dataset_version", "config_from", "overrides", "val"}.

    Example:
        >>> retrain("runs/champion", "data-v2", epochs=4)["bundle"]
    """
    from sightline.data.datasets import dataset_version, scan_dataset
    from sightline.train.fit import train

    champion = load_bundle(run)
    config, config_from = champion_config(champion)
    config = config.with_overrides(**overrides)
    data = Path(data)
    refuse_run_folder(data, "the new dataset version (the folder `sightline feedback export --out` wrote). Nothing "
                            "was trained.")
    dataset = scan_dataset(data, require_splits=("train", "val"))
    if set(dataset.classes) != set(champion.classes):
        raise DatasetError(f"'{data}' has classes {dataset.classes} but the champion {champion.path} has "
                           f"{champion.classes}; a challenger needs the champion's classes to be challenged (train a "
                           "new model with `sightline train` for a new set of classes).")
    version = dataset_version(dataset)
    if version == champion.dataset_version:
        raise UserInputError(f"'{data}' is dataset version {version}, the one the champion {champion.path} was "
                             "trained on: no new labels; export reviewed labels with `sightline feedback export` "
                             "first. Nothing was trained.")
    if out is None:
        from sightline.loop.content import bundle_hash

        assert champion.path is not None
        if champion.path.name == bundle_hash(champion.path):  # a registry copy (ROOT/<hash>): the RUN went into ROOT
            raise UserInputError(f"the champion {run} is a registry copy; pass --out DIR for the challenger's RUN "
                                 "folder (beside it would be inside the registry). Nothing was trained.")
    out_dir = Path(out) if out is not None else _run_dir(champion).with_name(f"{_run_dir(champion).name}-retrain-"
                                                                             f"{version[:8]}")
    if (out_dir / "bundle" / "model.json").exists() and not (out_dir / UNFINISHED).is_file():
        raise UserInputError(f"'{out_dir}' already holds a bundle; pass --out to a new folder. Nothing was trained.")
    if out_dir.exists() and not out_dir.is_dir():  # found only after training had begun (and said so) before
        raise UserInputError(f"--out '{out_dir}' is a file; pass --out a new folder. Nothing was trained.")

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / UNFINISHED).write_text(f"retrain of {champion.path} on {data} under way; a bundle here is not a "
                                      "finished challenger\n")
    try:
        run_dir = train(data, out_dir, config=config, progress=progress)
    except BaseException:
        if not (out_dir / "bundle" / "model.json").exists():  # no bundle to flag as unfinished
            (out_dir / UNFINISHED).unlink(missing_ok=True)
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    if not (run_dir / "bundle" / "model.json").is_file():  # a non-zero DDP rank: rank 0 writes the bundle
        return {"run": str(run_dir)}
    bundle = load_bundle(run_dir)
    bundle.name = champion.name
    bundle.version = next_version(str(champion.version), taken_versions)
    bundle.extra["retrain"] = {"champion": str(champion.path), "champion_version": champion.version,
                               "champion_dataset_version": champion.dataset_version, "config_from": config_from,
                               "overrides": overrides}
    bundle.write_json()
    (run_dir / UNFINISHED).unlink(missing_ok=True)
    return {"run": str(run_dir), "bundle": str(bundle.path), "version": bundle.version, "champion": str(champion.path),
            "champion_version": champion.version, "champion_dataset_version": champion.dataset_version,
            "dataset_version": bundle.dataset_version, "config_from": config_from, "overrides": overrides,
            "val": bundle.metrics.get("val")}
