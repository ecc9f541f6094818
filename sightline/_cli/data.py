"""`sightline data synth|split|audit`: thin commands over sightline.data."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from sightline._cli.common import console, existing_path, fail, print_json
from sightline.progress import rich_progress

# Unrelated images' perceptual hashes differ in about 32 of their 63 bits (binomial, sd ~4): above 20, chance pairs
# joined as near duplicates (at 64 every image was one group, all sent to train with only warnings)
MAX_DISTANCE = 20

data_app = typer.Typer(help="Make, split and audit image datasets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
    app.add_typer(data_app, name="data")


@data_app.command("split")
def split_cmd(
    src: Path = typer.Argument(..., help="Flat dataset: SRC/<class>/<image>. Never modified."),
    out: Path = typer.Argument(..., help="New folder for the split layout OUT/{train,val,test}/<class>/."),
    ratios: str = typer.Option("0.7,0.15,0.15", help="train,val,test shares."),
    seed: int = typer.Option(0, help="Random seed: same seed + same data = same split."),
    max_distance: int = typer.Option(8, min=-1, max=MAX_DISTANCE, help="Perceptual-hash bits (of 63) within which images count as near duplicates (-1: exact only; unrelated images differ in about 32)."),
    copy: bool = typer.Option(False, "--copy", help="Copy files instead of hard-linking them."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Stratified, seeded train/val/test split that keeps duplicates and near duplicates in one split."""
    from sightline.data.datasets import scan_dataset
    from sightline.data.split import split_dataset

    existing_path(src, "dataset folder")
    try:
        shares = tuple(float(x) for x in ratios.split(","))
    except ValueError:
        raise fail(f"--ratios '{ratios}' must be three numbers like 0.7,0.15,0.15") from None
    if len(shares) != 3:
        raise fail(f"--ratios '{ratios}' must be three numbers like 0.7,0.15,0.15")
    dataset = scan_dataset(src)  # scanned once: sizes the progress bar and feeds the split
    with rich_progress(enabled=not json_out) as progress:
        result = split_dataset(src, out, ratios=shares, seed=seed, max_distance=max_distance, link=not copy,
                               progress=progress, dataset=dataset)
    # a class a split should hold but does not: train never learns it, val and test report nothing on it
    missing = {c: [s for s, share in zip(result.counts, shares) if share > 0 and result.counts[s][c] == 0]
               for c in next(iter(result.counts.values()))}
    warnings = [f"class '{c}' has no image in {', '.join(splits)} ({sum(result.counts[s][c] for s in result.counts)} "
                "in all): add images of it or change --ratios, or its figures there are missing"
                for c, splits in missing.items() if splits]
    summary = {
        "out": str(result.out),
        "n_images": result.n_images,
        "counts": result.counts,
        "warnings": warnings,
        "groups_merged": result.groups_merged,
        "images_in_merged_groups": result.images_in_merged_groups,
        "excluded": result.excluded,
        "linked": result.linked,
        "copied": result.copied,
        "manifest": str(result.manifest),
    }
    if json_out:
        print_json(summary)
        return
    from rich.table import Table

    table = Table(title=escape(f"split of {src} -> {out}"))
    table.add_column("class")
    for s in result.counts:
        table.add_column(s, justify="right")
    for c in next(iter(result.counts.values())):
        table.add_row(escape(c), *(str(result.counts[s][c]) for s in result.counts))
    console.print(table)
    console.print(escape(
        f"{result.n_images} images; {result.groups_merged} duplicate groups merged "
        f"({result.images_in_merged_groups} images kept together in one split); "
        f"{result.linked} hard-linked, {result.copied} copied; manifest: {result.manifest}"
    ))
    for item in result.excluded:
        console.print(f"[yellow]not placed:[/] {escape(item['path'])}: {escape(item['reason'])}", highlight=False)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="New folder for the dataset."),
    n: int = typer.Option(1000, "--n", help="Number of images (before planted extras)."),
    size: int = typer.Option(224, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same images."),
    plant_issues: bool = typer.Option(False, "--plant-issues", help="Also plant known data problems (listed in planted_issues.json)."),
    shortcut: Optional[str] = typer.Option(None, help="Give this class a spurious corner marker (for explainability checks)."),
    layout: str = typer.Option("split", help="'split' (train/val/test, ready to train) or 'flat'."),
    textures: Optional[str] = typer.Option(None, "--textures", help="Comma-separated surface textures to draw from "
                                           "(default all: brushed, cast, woven, painted); e.g. train on some and "
                                           "make a production stream on others for a texture shift."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Generate a deterministic surface-inspection dataset (ok/scratch/spot/crack, masks, sightline.yaml)."""
    from sightline.data.synth import synthesize

    chosen = tuple(t.strip() for t in textures.split(",") if t.strip()) if textures is not None else None

    with rich_progress(enabled=not json_out) as progress:
        result = synthesize(out, n=n, size=size, seed=seed, plant_issues=plant_issues, shortcut=shortcut, layout=layout,
                            textures=chosen, progress=progress)
    if json_out:
        print_json({"out": str(result.out), "layout": result.layout, "n_images": result.n_images, "counts": result.counts,
                    "planted": result.planted})
        return
    for key, per_class in result.counts.items():
        console.print(f"{key:>5}: " + ", ".join(f"{c} {k}" for c, k in per_class.items()), highlight=False)
    extra = "; planted issues listed in planted_issues.json" if result.planted else ""
    console.print(escape(f"{result.n_images} images written to {result.out} ({result.layout} layout){extra}"),
                  highlight=False)


@data_app.command("audit")
def audit_cmd(
    data: Path = typer.Argument(..., help="Dataset folder (split or flat layout)."),
    out: Optional[Path] = typer.Option(None, help="Folder for audit.json, audit.html and manifest.csv [default: DATA/.audit]."),
    quarantine: bool = typer.Option(False, "--quarantine", help="Move flagged files into DATA/.quarantine/ (logged, never deleted)."),
    max_distance: int = typer.Option(8, min=-1, max=MAX_DISTANCE, help="Perceptual-hash bits (of 63) within which images count as near duplicates (unrelated images differ in about 32)."),
    labels: bool = typer.Option(True, "--labels/--no-labels", help="Look for likely-mislabeled images (confident "
                                "learning on a pretrained backbone's features; runs when classes have at least 10 "
                                "images each). Suggestions only: nothing is relabelled."),
    label_model: str = typer.Option("tf_efficientnet_lite0", "--label-model", help="timm architecture whose "
                                    "pooled features the label check uses."),
    label_weights: str = typer.Option("auto", "--label-weights", help="Its weights: 'auto' (packaged, else hub), "
                                      "'none' (random: for tests only) or a .safetensors/.pth file."),
    seed: int = typer.Option(0, help="Random seed of the label check's folds."),
    json_out: bool = typer.Option(False, "--json", help="Print audit.json to stdout."),
) -> None:
    """Find corrupt files, duplicates, label conflicts, split leakage, blur, odd sizes, imbalance, mixed modes, and
    likely-mislabeled images (ranked, with a suggested label, in label_issues.csv for review)."""
    from sightline.data.audit import KINDS, audit_dataset, refuse_audit_out_in_data
    from sightline.data.datasets import scan_dataset

    existing_path(data, "dataset folder")
    dataset = scan_dataset(data)
    if out is not None:
        refuse_audit_out_in_data(out, dataset)  # before the label check's minutes of work
    check = None
    with rich_progress(enabled=not json_out) as progress:
        if labels:  # composed here: the feature extraction is a layer above sightline.data
            from sightline.train.label_audit import audit_labels

            check = audit_labels(dataset, arch=label_model, weights=label_weights, seed=seed, progress=progress)
        result = audit_dataset(data, out=out, max_distance=max_distance, move_to_quarantine=quarantine,
                               progress=progress, dataset=dataset, label_check=check)
    if json_out:
        print_json(result.to_json())
        return
    from rich.table import Table

    table = Table(title=escape(f"audit of {data} ({result.n_images} images)"))
    table.add_column("finding")
    table.add_column("count", justify="right")
    table.add_column("example")
    for kind in KINDS:
        found = [f for f in result.findings if f.kind == kind]
        example = ""
        if found:
            first = found[0]
            example = ", ".join(first.paths[:2]) if first.paths else str(first.detail.get("ratio", ""))
            if kind in ("unreadable", "ignored"):
                example = f"{first.paths[0]}: {first.detail['reason']}"
            if kind == "class_imbalance":
                example = f"max/min {first.detail['ratio']}: {first.detail['training']}"
            if kind == "split_missing_class":
                example = "; ".join(f"{f.detail['split']} lacks {', '.join(f.detail['classes'])}" for f in found)
                example += f": {first.detail['advice']}"
            if kind == "similar_class_names":
                example = "; ".join(" / ".join(repr(c) for c in f.detail["classes"]) for f in found)
                example += f": {first.detail['advice']}"
            if kind == "multi_frame":
                example = ", ".join(f"{p} ({first.detail['frames'][p]} frames)" for p in first.paths[:2])
                example += f": {first.detail['note']}"
            if kind == "label_issue":
                d = first.detail
                example = f"{first.paths[0]}: {d['given']} -> {d['suggested']} (p {d['p_suggested']:.2f})"
        style = "" if not found else ("yellow" if kind in ("ignored", "class_imbalance", "mixed_color_modes",
                                                           "multi_frame", "label_issue", "split_missing_class",
                                                           "similar_class_names")
                                      else "red")
        count = f"[{style}]{len(found)}[/]" if style else "0"
        if kind == "label_issue" and (check is None or check.skipped):
            count, example = "-", "not checked" + (" (--no-labels)" if check is None else "")
        table.add_row(kind, count, escape(example))
    console.print(table)
    if check is not None:
        for line in check.notes:
            console.print(f"[yellow]label check:[/] {escape(line)}", highlight=False)
        if check.skipped:
            console.print(f"[yellow]{escape(check.skipped)}[/]", highlight=False)
        if check.issues:
            console.print(escape(f"{len(check.issues)} likely-mislabeled images ranked in audit.html; review "
                                 f"suggestions: {result.out / 'label_issues.csv'} (nothing was relabelled)"), highlight=False)
    console.print(escape(f"report: {result.out / 'audit.html'}, findings: {result.out / 'audit.json'}"), highlight=False)
    if result.quarantined:
        console.print(escape(f"moved {len(result.quarantined)} files to {result.root / '.quarantine'} (log.jsonl lists "
                             "them)"), highlight=False)
    for item in result.not_quarantined:  # flagged, not moved: said, or the user takes the folder for clean
        console.print(f"[yellow]not moved:[/] {escape(item['path'])} ({escape(item['kind'])}): {escape(item['reason'])}",
                      highlight=False)
