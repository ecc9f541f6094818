"""`challenge`: the champion and a challenger on the same images, a verdict from the promotion rule, and the
evidence: `challenge.json` and a self-contained `challenge.html` (DESIGN.md, "The loop").

Both bundles score the frozen `test` split of DATA and, when present, `DATA/production/<class>/<image>` (labelled
production images, e.g. the random slice of `feedback export`) through the inference core, each at its own
preprocessing (bundles that share one decode every file once). A prediction is what the bundle would serve: its
temperature and class thresholds applied (sightline.decision). The statistics are sightline.loop.paired's, the
rule sightline.loop.verdict's, read from the `promotion:` section of sightline.yaml (defaults when absent).

Example:
    >>> result = challenge("runs/champion", "runs/retrain", "data-v2")
    >>> result["verdict"]["promote"], result["verdict"]["reasons"]
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sightline.bundle import Bundle, load_bundle
from sightline.data.datasets import PRODUCTION, REGION_SUFFIXES, scan_dataset  # PRODUCTION: DATA/production/<class>/
from sightline.errors import BundleError, DatasetError, UserInputError
from sightline.progress import ProgressFn
from sightline.spec import ProblemSpec, Promotion, find_spec, load_spec

__all__ = ["PRODUCTION", "challenge", "check_same_classes", "production_files"]



def check_same_classes(champion: Bundle, challenger: Bundle) -> None:
    """One-line BundleError unless both bundles know the same classes (their order may differ)."""
    if set(champion.classes) == set(challenger.classes):
        return
    only_b = sorted(set(challenger.classes) - set(champion.classes))
    only_a = sorted(set(champion.classes) - set(challenger.classes))
    parts = ([f"only the challenger has {only_b}"] if only_b else []) + (
        [f"only the champion has {only_a}"] if only_a else [])
    raise BundleError(f"challenger {challenger.path} and champion {champion.path} have different classes "
                      f"({'; '.join(parts)}); a challenger must be trained on the champion's classes "
                      f"{champion.classes} to be compared.")


def production_files(data: Path) -> list[tuple[Path, str]]:
    """(image, class) for every file under DATA/production/<class>/ (sub-folders included; hidden files and region
    annotations skipped), sorted; [] without the folder. Unreadable images are reported when scored."""
    root = data / PRODUCTION
    if not root.is_dir():
        return []
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).parts
            if path.is_file() and not any(part.startswith(".") for part in rel) and \
                    not path.name.lower().endswith(REGION_SUFFIXES):
                rows.append((path, folder.name))
    return rows


def _rule(spec: str | Path | ProblemSpec | None, data: Path) -> tuple[Promotion, str | None]:
    """The promotion rule and the file it came from (None: the defaults)."""
    problem = spec if isinstance(spec, ProblemSpec) else load_spec(spec) if spec is not None else find_spec(data)
    if problem is None:
        return Promotion(), None
    return problem.promotion, str(problem.path) if problem.path else None


def _splits(data: Path, classes: list[str]) -> dict[str, tuple[list[Path], np.ndarray]]:
    """{"test": (paths, labels), "production": ...} with labels as indices into `classes`; DatasetError for a
    missing/empty test split or a class the models do not know."""
    dataset = scan_dataset(data, require_splits=("test",))
    test = dataset.split("test")
    if not test:
        raise DatasetError(f"'{data}/test' holds no image; the challenge needs the frozen test split.")
    found = {"test": [(s.path, s.label) for s in test]}
    production = production_files(data)
    if production:
        found[PRODUCTION] = production
    out = {}
    for name, rows in found.items():
        unknown = sorted({label for _, label in rows} - set(classes))
        if unknown:
            raise DatasetError(f"'{data}/{name}' has class folder(s) {unknown} that the models do not know (they "
                               f"know {classes}); remove them or challenge with models trained on those classes.")
        out[name] = ([p for p, _ in rows], np.array([classes.index(label) for _, label in rows], dtype=np.int64))
    return out


def _score(bundles: Sequence[Bundle], paths: list[Path], *, batch_size: int, progress: ProgressFn | None,
           task: str) -> tuple[list[np.ndarray], list[int], list[dict[str, str]]]:
    """Each bundle's logits on the files that every bundle could decode (rows in `paths` order), their positions
    in `paths`, and the files that could not be used. Bundles with one preprocessing decode each file once."""
    from contextlib import ExitStack

    from sightline.inference import open_engine, score_files

    groups: dict[Any, list[int]] = {}
    for i, bundle in enumerate(bundles):
        groups.setdefault(bundle.preprocessing, []).append(i)
    logits: list[np.ndarray | None] = [None] * len(bundles)
    index: list[list[int]] = [[] for _ in bundles]
    failed: dict[str, str] = {}
    with ExitStack() as stack:
        for members in groups.values():
            engines = [stack.enter_context(open_engine(bundles[i], backend="torch")) for i in members]
            outs, inputs = score_files(engines, paths, batch_size=batch_size, progress=progress, task=task)
            for i, out in zip(members, outs):
                logits[i], index[i] = out.logits, list(inputs.index)
            failed.update({f["path"]: f["reason"] for f in inputs.failed})
    common = sorted(set.intersection(*(set(ix) for ix in index)))
    rows = []
    for lg, ix in zip(logits, index):
        where = {pos: row for row, pos in enumerate(ix)}
        assert lg is not None
        rows.append(lg[[where[pos] for pos in common]])
    return rows, common, [{"path": p, "reason": r} for p, r in sorted(failed.items())]


def _decide(bundle: Bundle, logits: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) probabilities and (N,) predicted indices, columns and indices in `classes` order (the champion's):
    the bundle's own temperature and thresholds, as it would serve them."""
    from sightline.decision import decide

    dec = decide(logits, bundle.classes, temperature=bundle.temperature, thresholds=bundle.thresholds)
    order = [bundle.classes.index(c) for c in classes]
    remap = np.array([classes.index(c) for c in bundle.classes], dtype=np.int64)
    return dec.probabilities[:, order], remap[dec.labels]


def _describe(bundle: Bundle) -> dict[str, Any]:
    from sightline.loop.content import bundle_hash

    assert bundle.path is not None
    return {"path": str(bundle.path), "name": bundle.name, "version": bundle.version,
            "architecture": bundle.architecture, "bundle_hash": bundle_hash(bundle.path),
            "dataset_version": bundle.dataset_version, "temperature": bundle.temperature,
            "input_size": bundle.preprocessing.input_size}


def _refuse_unfinished(bundle: Bundle) -> None:
    """UserInputError for a bundle that an interrupted `retrain` left behind (the champion's version string, no
    lineage): running the same retrain again finishes it."""
    from sightline.loop.retrain import UNFINISHED

    assert bundle.path is not None
    run = bundle.path.parent if bundle.path.name == "bundle" else bundle.path
    if (run / UNFINISHED).is_file():
        raise UserInputError(f"{bundle.path} is from a retrain that did not finish (interrupted or still running: "
                             f"{run / UNFINISHED}); run the same `sightline retrain ... --out {run}` again.")


def _default_out(challenger: Bundle) -> Path:
    folder = challenger.path
    assert folder is not None
    return (folder.parent if folder.name == "bundle" else folder) / "challenge"


def challenge(
    champion: str | Path,
    challenger: str | Path,
    data: str | Path,
    *,
    spec: str | Path | ProblemSpec | None = None,
    out: str | Path | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Compare `challenger` with `champion` (RUN or bundle folders) on DATA's frozen test split and its production
    split, decide with the promotion rule of `spec` (default DATA/sightline.yaml, else the defaults), and write
    OUT/challenge.json and OUT/challenge.html (OUT default: the challenger's RUN/challenge). Returns what
    challenge.json holds.

    Bad input (bundles with different classes, no test split, a class folder the models do not know, a broken
    sightline.yaml, a registry copy as the challenger without `out`) raises a one-line SightlineError before
    anything is scored or written.

    Example:
        >>> r = challenge("runs/champion", "runs/retrain", "data-v2", n_resamples=2000)
        >>> r["splits"]["test"]["accuracy"]["difference"], r["verdict"]["promote"]
    """
    from sightline.loop.paired import compare_split
    from sightline.loop.report import write_report
    from sightline.loop.verdict import decide_promotion

    if seed < 0 or n_resamples < 1:  # numpy refused a negative seed with a ValueError traceback, after loading
        bad = f"--seed {seed} must be 0 or more" if seed < 0 else f"n_resamples={n_resamples} must be 1 or more"
        raise UserInputError(f"{bad}.")
    a, b = load_bundle(champion), load_bundle(challenger)
    _refuse_unfinished(b)
    check_same_classes(a, b)
    data = Path(data)
    from sightline.loop.retrain import refuse_run_folder

    refuse_run_folder(data, "the dataset with the frozen test/ split (the folder `sightline feedback export --out` "
                            "wrote, or the champion's dataset).")
    rule, rule_file = _rule(spec, data)
    splits = _splits(data, a.classes)
    from sightline.loop.content import bundle_hash

    assert a.path is not None and b.path is not None
    if bundle_hash(a.path) == bundle_hash(b.path):  # scored, it "passed" every check and was verdict PROMOTE
        raise UserInputError(f"the champion {champion} and the challenger {challenger} are the same model (same "
                             "bundle hash); pass the retrained RUN as the challenger.")
    if out is None and b.path.name == bundle_hash(b.path):  # a registry copy, named by its hash: immutable
        raise UserInputError(f"the challenger {challenger} is a registry copy, which stays as it was added; pass "
                             "--out DIR for challenge.json and challenge.html.")
    out_dir = Path(out) if out is not None else _default_out(b)

    comparisons: dict[str, dict[str, Any]] = {}
    samples: dict[str, np.ndarray] = {}
    unreadable: list[dict[str, str]] = []
    for name, (paths, labels) in splits.items():
        (logits_a, logits_b), kept, failed = _score([a, b], paths, batch_size=batch_size, progress=progress,
                                                     task=f"{name} split")
        unreadable += [{**f, "split": name} for f in failed]
        if not kept:
            raise DatasetError(f"no image of '{data}/{name}' could be read ({failed[0]['reason']}); check the files.")
        y = labels[kept]
        probs_a, pred_a = _decide(a, logits_a, a.classes)
        probs_b, pred_b = _decide(b, logits_b, a.classes)
        result = compare_split(y, probs_a, probs_b, pred_a, pred_b, a.classes, n_resamples=n_resamples, seed=seed,
                               keep_samples=True)
        samples[name] = result["accuracy"].pop("samples")
        result["n_listed"] = len(paths)
        comparisons[name] = result

    verdict = decide_promotion(comparisons["test"], comparisons.get(PRODUCTION), rule)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "champion": _describe(a),
        "challenger": _describe(b),
        "data": str(data.resolve()),
        "classes": a.classes,
        "predictions": "each bundle's served decision: its temperature and class thresholds applied",
        "rule": {**rule.model_dump(), "from": rule_file or "defaults (no promotion: section in sightline.yaml)"},
        "splits": comparisons,
        "unreadable": unreadable,
        "verdict": verdict.to_dict(),
        "files": {"json": str(out_dir / "challenge.json"), "html": str(out_dir / "challenge.html")},
    }
    write_report(result, out_dir, bootstrap_samples=samples)
    return result
