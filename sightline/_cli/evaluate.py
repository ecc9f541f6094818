"""`sightline` commands of the evaluate stage: `evaluate`, `explain`, `init`."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from sightline._cli.common import console, existing_path, fail, print_json, refuse_empty_inputs


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
    app.command("evaluate")(evaluate_cmd)
    app.command("explain")(explain_cmd)
    app.command("init")(init_cmd)


def evaluate_cmd(
    run: Path = typer.Argument(..., help="RUN folder, its bundle/ folder, or a folder of seed-<s>/ runs."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder in the split layout."),
    split: str = typer.Option("test", "--split", help="Split to report on: test (default), val or train."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default RUN/eval)."),
    spec: Path | None = typer.Option(None, "--spec", help="Problem definition (default DATA/sightline.yaml)."),
    method: str = typer.Option("gradcam", "--method", help="Heatmap method: gradcam, gradcam++, eigencam, layercam."),
    robustness: bool = typer.Option(True, "--robustness/--no-robustness", help="Run the corruption suite."),
    robustness_images: int = typer.Option(100, "--robustness-images", min=1, help="Images in the corruption suite."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, help="Bootstrap resamples for the intervals."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    no_update: bool = typer.Option(False, "--no-update", help="Do not write temperature/thresholds into the bundle."),
    ood: Path | None = typer.Option(None, "--ood", help="Folder of images unlike the classes: AUROC, FPR at 95 % TPR "
                                    "and rejection rate of every open-set score on them."),
    no_reference: bool = typer.Option(False, "--no-reference", help="Do not refresh the monitor's reference profile "
                                      "(bundle/reference.npz: refitted from evaluate's own val pass, reusing the "
                                      "train-image bank and stand-in outputs train stored with it; built in full, "
                                      "scoring up to 5,000 train images and ~300 stand-ins, when none matches)."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout instead of a summary."),
) -> None:
    """Metrics, calibration, thresholds from sightline.yaml, heatmaps and robustness -> metrics.json + report.html."""
    from sightline.evaluate.run import evaluate
    from sightline.progress import rich_progress

    existing_path(run, "run")
    existing_path(data, "dataset")
    if ood is not None:
        existing_path(ood, "--ood folder")
    if split not in ("train", "val", "test"):
        raise fail(f"--split {split!r} is unknown; use test, val or train.")
    with rich_progress(enabled=not as_json) as progress:
        m = evaluate(
            run, data, split=split, out=out, spec=spec, method=method, robustness=robustness,
            robustness_images=robustness_images, n_bootstrap=bootstrap, batch_size=batch_size,
            update_bundle=not no_update, reference=not no_reference, ood=ood, progress=progress,
        )
    if as_json:
        print_json(m.to_json())
        return
    ci = m["ci"]
    console.print(f"[bold]{m['split']}[/] split, {m['n_images']} images")
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        line = f"  {key:<18} {m[key]:.3f}  (95% CI {ci[key]['low']:.3f}-{ci[key]['high']:.3f})"
        if m.get("seeds") and key in m["seeds"]["mean"]:
            line += f"  seeds: {m['seeds']['mean'][key]:.3f} +- {m['seeds']['std'][key]:.3f}"
        console.print(line, highlight=False)
    console.print(f"  ECE {m['ece_uncalibrated']:.3f} -> {m['ece']:.3f} (temperature {m['temperature']:.2f})",
                  highlight=False)
    review = m["review"]
    if review["review_confidence"] is not None:
        console.print(f"  review below {review['review_confidence']:.2f}: {1 - review['coverage']:.0%} to a person, "
                      f"accuracy of the rest {review['accuracy_accepted'] or 0:.3f}", highlight=False)
    for t in m["targets"]:
        mark = "[green]PASS[/]" if t["passed"] else "[red]FAIL[/]"
        console.print(f"  {mark} {escape(target_line(t))}", highlight=False)
    if m.get("pointing_game"):
        pg = m["pointing_game"]
        console.print(escape(f"  pointing game {pg['overall']:.2f}; likely shortcut: {pg['shortcut_classes'] or 'none'}"),
                      highlight=False)
    for s in m.get("robustness", {}).get("failure_modes", [])[:3]:
        console.print(f"  {escape(s)}", highlight=False)
    if m.get("reference"):
        from sightline.evaluate.reference import describe_reference

        for line in describe_reference(m["reference"]):
            console.print(f"  {escape(line)}", highlight=False)
    if m.get("ood"):
        o = m["ood"]
        console.print(escape(f"  --ood {o['folder']}: {o['n_images']} images vs {o['in_distribution']['n_images']} "
                             f"{o['in_distribution']['split']} images"), highlight=False)
        for name, row in o["scores"].items():
            rejected = "n/a" if row["rejection_rate"] is None else f"{row['rejection_rate']:.1%}"
            console.print(f"    {name:<12} AUROC {row['auroc']:.3f}  FPR@95%TPR {row['fpr_at_95_tpr']:.1%}  "
                          f"rejected {rejected}{'  (chosen)' if row['chosen'] else ''}", highlight=False)
    if m.get("unreadable"):
        first = m["unreadable"][0]
        said = first["reason"] if Path(first["path"]).name in first["reason"] else f"{first['path']}: {first['reason']}"
        console.print(f"  [yellow]{len(m['unreadable'])} file(s) could not be read and were left out[/] (e.g. "
                      f"{escape(said)})", highlight=False)
    if m.get("warning"):
        console.print(f"  [yellow]warning:[/] {escape(m['warning'])}", highlight=False)
    for key, path in m["files"].items():
        console.print(escape(f"  {key}: {path}"), highlight=False)


def explain_cmd(
    run: Path = typer.Argument(..., help="RUN or bundle folder."),
    images: list[str] = typer.Argument(..., help="Image files or folders to explain."),
    method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++, eigencam or layercam."),
    target: str | None = typer.Option(None, "--class", help="Explain this class (default: the predicted one)."),
    out: Path = typer.Option(Path("explain"), "--out", "-o", help="Folder for the overlays."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Write heatmap overlays (<stem>.<method>.png: input | overlay) showing where the model looks."""
    from sightline.explain.run import explain_files

    existing_path(run, "run")
    refuse_empty_inputs(images, "image files or folders")
    rows = explain_files(run, [Path(item) for item in images], method=method, target=target, out=out)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        if "error" in r:
            # the reason names the file already when it comes from decoding
            said = r["error"] if str(r["error"]).startswith(str(r["path"])) else f"{r['path']}: {r['error']}"
            console.print(f"  [red]skipped[/] {escape(said)}", highlight=False)
        else:
            console.print(escape(f"  {r['path']}: {r['predicted']} ({r['confidence']:.2f}) -> {r['overlay']}"),
                          highlight=False)
    if rows and all("error" in r for r in rows):
        raise fail("no image could be read; check the paths.")


def init_cmd(
    data: Path = typer.Argument(..., help="Dataset folder (split or flat layout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing sightline.yaml."),
) -> None:
    """Write DATA/sightline.yaml: a commented problem definition with the dataset's classes filled in."""
    from sightline.data.datasets import scan_dataset
    from sightline.spec import write_spec_template

    existing_path(data, "dataset")
    dataset = scan_dataset(data)
    path = write_spec_template(data, dataset.classes, overwrite=force)
    console.print(escape(f"wrote {path}: answer its questions (task, metric, costs, targets), then run "
                         "`sightline evaluate`."), highlight=False)


def target_line(t: dict) -> str:
    """A target of sightline.yaml as the summary says it after PASS / FAIL: the figure, and for a share of images its
    95 % interval and count, with the report's 'not conclusive' when the interval reaches the other side."""
    got = f"got {t['value']:.3f}"
    if t.get("n"):
        got += f", 95% CI {t['low']:.3f}-{t['high']:.3f} on {t['n']} images"
    doubt = "; not conclusive: the interval reaches the other side of the target" if t.get("conclusive") is False else ""
    return f"{t['target']} ({got}){doubt}"
