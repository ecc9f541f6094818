"""`sightline retrain`, `sightline challenge`, `sightline registry ...`: thin commands over sightline.loop."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from sightline._cli.common import console, err_console, existing_path, fail, print_json

DATABASE_HELP = ("The service database (SQLAlchemy URL such as sqlite:///state/sightline.db or "
                 "postgresql+psycopg://..., or a SQLite file path).")

registry_app = typer.Typer(help="Model versions, the champion/challenger aliases and their history.",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
    app.command("retrain")(retrain_cmd)
    app.command("challenge")(challenge_cmd)
    app.add_typer(registry_app, name="registry")
    app.add_typer(feedback_app, name="feedback")


feedback_app = typer.Typer(help="Reviewers' labels from the service -> a new dataset version.", no_args_is_help=True)


@feedback_app.command("export")
def feedback_export_cmd(
    database: Optional[str] = typer.Option(None, "--database", envvar="SIGHTLINE_DATABASE_URL", help=DATABASE_HELP),
    data: Path = typer.Option(..., "--data", "-d", help="The parent dataset (split layout; its test split is kept "
                              "as is)."),
    out: Path = typer.Option(..., "--out", "-o", help="The new dataset version (a new or empty folder)."),
    images: Optional[str] = typer.Option(None, "--images", help="The service's image store, a folder or an fsspec URL (default: images/ "
                                          "beside a SQLite database, as `sightline serve` keeps it)."),
    val_ratio: float = typer.Option(0.15, "--val-ratio", help="Share of each class's reviewed images put in val."),
    audit: bool = typer.Option(True, "--audit/--no-audit", help="Run the data audit on the new version."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write a new dataset version: the parent + reviewed images (train/val by a stratified hash, the random
    accepted slice in production/), lineage in manifest.csv, the audit in NEWDATA/.audit."""
    from sightline.loop.feedback import export_feedback
    from sightline.loop.registry import database_url

    existing_path(data, "dataset")
    summary = export_feedback(database_url(database), data, out, images=images, val_ratio=val_ratio, audit=audit)
    if as_json:
        print_json(summary)
        return
    added = summary["added"]
    parts = [f"{split} +{sum(c.values())}" for split, c in added.items()]
    console.print(f"{out}: dataset {summary['dataset_version']} from {summary['parent_version']} "
                  f"({summary['parent_files_linked']} parent files linked; {', '.join(parts)})", highlight=False,
                  markup=False)
    skipped = summary["skipped"]
    console.print(f"  not placed: {len(skipped['unknown_label'])} labelled unknown, {len(skipped['image_missing'])} "
                  f"without their image, {len(skipped['duplicates_of_parent'])} copies of parent images, "
                  f"{len(summary['conflicts'])} conflicting labels (feedback.json lists them)", highlight=False,
                  markup=False)
    if "audit" in summary:
        counts = ", ".join(f"{k} {v}" for k, v in summary["audit"]["counts"].items()) or "no findings"
        console.print(f"  audit: {counts} ({summary['audit']['out']})", highlight=False, markup=False)


def retrain_cmd(
    run: str = typer.Argument(..., help="The champion: a RUN folder or its bundle/ folder, or with --database a "
                              "registry version, alias (champion) or hash prefix (then pass --out)."),
    data: Path = typer.Option(..., "--data", "-d", help="The new dataset version (split layout, e.g. from "
                              "`sightline feedback export`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="RUN folder for the challenger "
                                       "(default: RUN-retrain-<dataset version> beside RUN)."),
    epochs: Optional[int] = typer.Option(None, help="Override the champion's maximum epochs."),
    seed: Optional[int] = typer.Option(None, help="Override the champion's seed."),
    accelerator: Optional[str] = typer.Option(None, help="Override: auto | cpu | gpu."),
    workers: Optional[int] = typer.Option(None, help="Override: DataLoader worker processes."),
    database: Optional[str] = typer.Option(None, "--database", envvar="SIGHTLINE_DATABASE_URL",
                                           help=DATABASE_HELP + " Only to name the champion by its registry version "
                                           "or alias."),
    root: Optional[str] = typer.Option(None, "--root", envvar="SIGHTLINE_REGISTRY", help="The registry's folder of "
                                       "copies (default: as for `sightline registry`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a challenger on a new dataset version with the champion's settings (refused without new labels)."""
    from sightline.loop.retrain import retrain

    champion = model_folder(run, "champion", database, root)
    existing_path(data, "dataset")
    taken: set[str] = set()
    if database:  # version strings the registry holds of this model: the challenger's is counted on past them
        from sightline.bundle import load_bundle

        name = load_bundle(champion).name
        with _open(database, root) as registry:
            taken = {v.model_version for v in registry.versions() if v.name == name}
    given = {"epochs": epochs, "seed": seed, "accelerator": accelerator, "num_workers": workers}
    result = retrain(champion, data, out=out, progress=not as_json, taken_versions=taken,
                     **{k: v for k, v in given.items() if v is not None})
    if as_json:
        print_json(result)
        return
    if "bundle" not in result:
        return
    val = result["val"] or {}
    console.print(f"challenger {result['bundle']} (version {result['version']}, dataset {result['dataset_version']}; "
                  f"champion {result['champion_version']} was on {result['champion_dataset_version']})",
                  highlight=False, markup=False)
    if val:
        console.print(f"  val ({val['n_images']} images): accuracy {val['accuracy']:.4f}, macro-F1 "
                      f"{val['macro_f1']:.4f}; settings from {result['config_from']}", highlight=False, markup=False)
    # evaluate (temperature, thresholds) and export (the served ONNX) rewrite the bundle, so its content hash: a
    # verdict recorded before them is kept against a hash that `registry promote` never sees
    run_dir = result["run"]
    console.print(f"next: sightline evaluate {run_dir} --data {data} && sightline export {run_dir} --int8, then "
                  f"sightline challenge {run} {run_dir} --data {data} --database URL", highlight=False,
                  markup=False)


def challenge_cmd(
    champion: str = typer.Argument(..., help="The champion: RUN or bundle folder, or with --database a registry "
                                   "version (v1), alias (champion) or hash prefix."),
    challenger: str = typer.Argument(..., help="The challenger: RUN or bundle folder, or with --database a registry "
                                     "version, alias (challenger) or hash prefix (then pass --out)."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset with the frozen test/ split (and production/)."),
    spec: Optional[Path] = typer.Option(None, "--spec", help="Problem definition with the promotion: rule "
                                        "(default: DATA/sightline.yaml, else the default rule)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for challenge.json and challenge.html "
                                       "(default: the challenger's RUN/challenge)."),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=100, help="Bootstrap resamples of the image set."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    database: Optional[str] = typer.Option(None, "--database", envvar="SIGHTLINE_DATABASE_URL",
                                           help=DATABASE_HELP + " When given, the verdict is recorded in the "
                                           "registry, where it gates `registry promote`, and the models may be "
                                           "named by their registry version or alias."),
    root: Optional[str] = typer.Option(None, "--root", envvar="SIGHTLINE_REGISTRY", help="The registry's folder of "
                                       "copies, for a version named by its registry reference (default: as for "
                                       "`sightline registry`)."),
    as_json: bool = typer.Option(False, "--json", help="Print challenge.json to stdout instead of a summary."),
) -> None:
    """Champion vs challenger on the frozen test (+ production) images -> verdict, challenge.json, challenge.html.

    Paired bootstrap, McNemar's exact test, per-class recall, ECE. Exit code 0 promote, 1 do not, 2 bad input."""
    from sightline.loop.challenge import challenge
    from sightline.progress import rich_progress

    champion_dir = model_folder(champion, "champion", database, root)
    challenger_dir = model_folder(challenger, "challenger", database, root)
    existing_path(data, "dataset")
    with rich_progress(enabled=not as_json) as progress:
        result = challenge(champion_dir, challenger_dir, data, spec=spec, out=out, n_resamples=bootstrap, seed=seed,
                           batch_size=batch_size, progress=progress)
    recorded = None
    if database:
        _warn_unfinished(challenger_dir)
        with _open(database, root) as registry:  # the --root the references were resolved in
            recorded = registry.record_challenge(result)
    verdict = result["verdict"]
    if as_json:
        print_json(result)
    else:
        for name, s in result["splits"].items():
            acc, m = s["accuracy"], s["mcnemar"]
            console.print(f"[bold]{name}[/] ({s['n_images']} images): accuracy {acc['champion']:.3f} -> "
                          f"{acc['challenger']:.3f} ({acc['difference'] * 100:+.1f} points, 95% CI "
                          f"{acc['low'] * 100:+.1f} to {acc['high'] * 100:+.1f}); McNemar p={m['p_value']:.3g} "
                          f"(alone right: challenger {m['challenger_only']}, champion {m['champion_only']}); ECE "
                          f"{s['calibration']['champion_ece']:.3f} -> {s['calibration']['challenger_ece']:.3f}",
                          highlight=False)
        word = "[green]PROMOTE[/]" if verdict["promote"] else "[red]DO NOT PROMOTE[/]"
        console.print(f"verdict: {word}")
        for reason in verdict["reasons"]:
            console.print(f"  - {reason}", highlight=False, markup=False)
        console.print(f"  {result['files']['html']}", highlight=False, markup=False)
        if recorded is not None:
            console.print(f"  recorded in the registry as challenge {recorded}", highlight=False, markup=False)
    if not verdict["promote"]:
        raise typer.Exit(1)


def model_folder(given: str, what: str, database: str | None, root: str | None) -> Path:
    """The folder of the model `given` names: a RUN or bundle folder when one exists there, else (with a database)
    the registry's copy of the version, alias or hash prefix it names. One-line error when it is neither."""
    from sightline.errors import UserInputError

    path = Path(given)
    if given.strip() and path.exists():  # a folder wins over a reference of the same name ('champion' in cwd)
        return path
    if not database:
        raise fail(f"{what} '{given}' is not a folder; pass a RUN or bundle folder, or name a registry version "
                   "(v3, champion, challenger, a hash prefix) with --database URL (or SIGHTLINE_DATABASE_URL).")
    try:
        with _open(database, root) as registry:
            version = registry.resolve(given)
            hint = None if registry.intact(version) else registry.restore_hint(version)
    except UserInputError as exc:
        raise fail(f"{what} '{given}' is not a folder, nor a registry version: {exc}") from None
    if hint is not None:  # scored, the verdict would be about files that are not the version's
        raise fail(f"{what} {version.ref}'s files at {version.path} are missing or changed; {hint}.")
    err_console.print(f"{what}: {version.ref} ({given}) = {version.path}", highlight=False, markup=False,
                      soft_wrap=True)
    return Path(version.path)


# --- registry ---------------------------------------------------------------------------------------------------
DatabaseOpt = typer.Option(None, "--database", envvar="SIGHTLINE_DATABASE_URL", help=DATABASE_HELP)
# every registry command takes --root, as `serve --registry` takes the same folder (and the same variable): a registry
# folder moved away from registry/ beside its database, or kept at an fsspec URL, is named the same way everywhere
RootOpt = typer.Option(None, "--root", envvar="SIGHTLINE_REGISTRY", help="Folder or fsspec URL (s3://bucket/registry) "
                       "for the registry's copies of bundles, as `serve --registry` takes it (default: "
                       "SIGHTLINE_REGISTRY, else registry/ beside a SQLite database).")
ByOpt = typer.Option(None, "--by", help="Who does it, for the log (default: the OS user).")
ReasonOpt = typer.Option(None, "--reason", help="Why, for the log.")
AliasOpt = typer.Option("champion", "--alias", help="champion or challenger.")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON.")


def _open(database: str | None, root: str | None = None) -> Any:
    from sightline.loop.registry import Registry, database_url

    return Registry(database_url(database), root=root)


def _metrics(version: Any) -> str:
    m = version.test_metrics
    if not m:
        return "test: not evaluated"
    return f"test accuracy {m.get('accuracy', float('nan')):.3f} ({m.get('n_images', '?')} images)"


@registry_app.command("add")
def registry_add(
    bundle: Path = typer.Argument(..., help="RUN or bundle folder to register."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Also point this alias (champion or challenger) at it."),
    database: Optional[str] = DatabaseOpt,
    root: Optional[str] = RootOpt,
    by: Optional[str] = ByOpt,
    reason: Optional[str] = ReasonOpt,
    force: bool = typer.Option(False, "--force", help="With --alias: past a failed challenge (champion), or to "
                               "a version whose classes differ from the alias's current one."),
    as_json: bool = JsonOpt,
) -> None:
    """Register a bundle as an immutable version (its files copied, read-only)."""
    existing_path(bundle, "bundle")
    with _open(database, root) as registry:
        added = registry.add(bundle, by=by, reason=reason, alias=alias, force=force)
        if added.move is not None:
            _warn_unservable(registry, added.move)
            _warn_other_classes(registry, added.move)
    v, move = added.version, added.move
    if as_json:
        print_json({"version": v.to_dict(), "created": added.created, "restored": added.restored,
                    "move": move.to_dict() if move else None})
        return
    what = "registered" if added.created else (
        "already registered, its copy restored (it was missing or changed)" if added.restored else "already registered")
    console.print(f"{what}: {v.ref} {v.name} {v.model_version} ({v.architecture}), hash {v.bundle_hash[:12]}, "
                  f"dataset {v.dataset_version or 'unknown'}, {_metrics(v)}", highlight=False, markup=False)
    console.print(f"  files: {v.path}", highlight=False, markup=False)
    if move is not None:
        console.print(f"  {move.alias}: {move.from_ref or '(unset)'} -> {move.to_ref}", highlight=False, markup=False)


@registry_app.command("list")
def registry_list(database: Optional[str] = DatabaseOpt, root: Optional[str] = RootOpt,
                  as_json: bool = JsonOpt) -> None:
    """Every version, with the aliases that point to it."""
    from rich.table import Table

    with _open(database, root) as registry:
        versions, aliases = registry.versions(), registry.aliases()
    by_id: dict[int, list[str]] = {}
    for alias, v in aliases.items():
        by_id.setdefault(v.id, []).append(alias)
    if as_json:
        print_json([{**v.to_dict(), "aliases": by_id.get(v.id, [])} for v in versions])
        return
    if not versions:
        console.print("no versions yet; `sightline registry add BUNDLE` registers one.")
        return
    table = Table()
    for col in ("version", "aliases", "model", "hash", "dataset", "test acc", "added"):
        # fold, not "…": "challen…" or "sightli…" hid which alias or model a row is, in an 80-column terminal
        table.add_column(col, no_wrap=col in ("version", "hash", "test acc"), overflow="fold")
    for v in versions:
        acc = (v.test_metrics or {}).get("accuracy")
        table.add_row(v.ref, ", ".join(by_id.get(v.id, [])), escape(f"{v.name} {v.model_version}"),
                      v.bundle_hash[:10],
                      v.dataset_version or "-", f"{acc:.3f}" if acc is not None else "-",
                      escape(f"{v.added_at[:10]} {v.added_by}"))  # a cell is markup too
    console.print(table)


@registry_app.command("show")
def registry_show(
    version: str = typer.Argument(..., help="A version (v3), an alias (champion) or a hash prefix."),
    database: Optional[str] = DatabaseOpt,
    root: Optional[str] = RootOpt,
    as_json: bool = JsonOpt,
) -> None:
    """One version: provenance, test metrics, aliases, its last challenge, and whether its files are intact."""
    with _open(database, root) as registry:
        v = registry.resolve(version)
        aliases = [a for a, got in registry.aliases().items() if got.id == v.id]
        last = registry.last_challenge(v.bundle_hash)
        gate = registry.gate_challenge(v.bundle_hash)
        refs = {x.bundle_hash: x.ref for x in registry.versions()}
        intact = registry.intact(v)
    if as_json:
        print_json({**v.to_dict(), "aliases": aliases, "last_challenge": last, "gate_challenge": gate,
                    "intact": intact})
        return
    console.print(f"{v.ref}: {v.name} {v.model_version} ({v.architecture}); aliases: {', '.join(aliases) or 'none'}",
                  highlight=False, markup=False)
    console.print(f"  hash {v.bundle_hash}; files {v.path} ({'intact' if intact else 'CHANGED OR MISSING'})",
                  highlight=False, markup=False)
    console.print(f"  dataset {v.dataset_version or 'unknown'}; {_metrics(v)}; classes {', '.join(v.classes)}",
                  highlight=False, markup=False)
    console.print(f"  added {v.added_at} by {v.added_by} from {v.source}" + (f": {v.reason}" if v.reason else ""),
                  highlight=False, markup=False)
    if last is None:
        console.print("  never challenged", highlight=False, markup=False)
    else:
        for what, c in (("last challenge", last), ("the champion gate reads", gate)):
            if c is None or (c is gate and c["id"] == last["id"]):
                continue
            against = refs.get(c["champion_hash"]) or f"an unregistered model ({c['champion_hash'][:12]})"
            console.print(f"  {what} {c['at']} (challenge {c['id']}, against {against}): "
                          f"{'passed' if c['promote'] else 'FAILED'}: {'; '.join(c['reasons'])}", highlight=False,
                          markup=False)


@registry_app.command("promote")
def registry_promote(
    version: str = typer.Argument(..., help="A version (v3) or a hash prefix."),
    alias: str = AliasOpt,
    database: Optional[str] = DatabaseOpt,
    root: Optional[str] = RootOpt,
    by: Optional[str] = ByOpt,
    reason: Optional[str] = ReasonOpt,
    force: bool = typer.Option(False, "--force", help="Promote a version whose last challenge failed (logged as "
                               "forced), or whose classes differ from the alias's current version."),
    as_json: bool = JsonOpt,
) -> None:
    """Point an alias (default champion) at a version; refused when its last challenge failed, unless --force."""
    with _open(database, root) as registry:
        move = registry.promote(version, alias=alias, by=by, reason=reason, force=force)
        _warn_unservable(registry, move)
        _warn_other_classes(registry, move)
    _print_move(move, as_json)


@registry_app.command("rollback")
def registry_rollback(
    alias: str = AliasOpt,
    database: Optional[str] = DatabaseOpt,
    root: Optional[str] = RootOpt,
    by: Optional[str] = ByOpt,
    reason: Optional[str] = ReasonOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Move an alias (default champion) back to the version it pointed to before its last promotion."""
    with _open(database, root) as registry:
        move = registry.rollback(alias=alias, by=by, reason=reason)
        _warn_unservable(registry, move)
        _warn_other_classes(registry, move)
    _print_move(move, as_json)


@registry_app.command("history")
def registry_history(
    alias: Optional[str] = typer.Option(None, "--alias", help="Only this alias (default: all)."),
    database: Optional[str] = DatabaseOpt,
    root: Optional[str] = RootOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every alias move, oldest first: what moved, from and to which version, who, when, why."""
    with _open(database, root) as registry:
        moves = registry.history(alias)
    if as_json:
        print_json([m.to_dict() for m in moves])
        return
    if not moves:
        console.print("no alias has moved yet.")
    for m in moves:
        _print_move(m, False)


def _warn_unfinished(challenger: Path) -> None:
    """A warning line when the challenger is not yet evaluated (no test metrics) or exported (no model.onnx): either
    step rewrites it, so the verdict recorded now is kept against a content hash the registered bundle will not
    have, and `registry promote` would not see it (a failed challenger passed the gate as "never challenged")."""
    from sightline.bundle import ONNX, load_bundle

    bundle = load_bundle(challenger)
    assert bundle.path is not None
    missing = ([] if isinstance(bundle.metrics, dict) and "test" in bundle.metrics else ["evaluated"]) + (
        [] if (bundle.path / ONNX).is_file() else ["exported"])
    if missing:
        err_console.print(f"[yellow]warning:[/] the challenger {escape(str(bundle.path))} is not yet "
                          f"{' or '.join(missing)}; doing so gives it a new content hash, which this verdict does not "
                          "cover, so `registry promote` would not see it: evaluate and export the challenger, then "
                          "run the challenge again.", highlight=False, soft_wrap=True)


def _warn_other_classes(registry: Any, move: Any) -> None:
    """A warning line when the alias moved between versions with other classes: a rollback is not refused for it
    (it undoes a promotion that --force let through, and is what an operator reaches for when the new model is
    wrong), and a forced promotion said only what a promotion says; a server following the alias answers with the
    other labels from now on."""
    if move.from_ref is None:
        return
    versions = {v.ref: v for v in registry.versions()}
    before, after = versions.get(move.from_ref), versions.get(move.to_ref)
    if before is None or after is None or set(before.classes) == set(after.classes):
        return
    gone, new = sorted(set(before.classes) - set(after.classes)), sorted(set(after.classes) - set(before.classes))
    change = "; ".join(([f"no longer answers {', '.join(gone)}"] if gone else []) +
                       ([f"now answers {', '.join(new)}"] if new else []))
    text = (f"{move.alias} moved from {before.ref} (classes {', '.join(before.classes)}) to {after.ref} (classes "
            f"{', '.join(after.classes)}): a server following {move.alias} {change} from now on; run `sightline "
            f"monitor` against {after.ref}'s bundle.")
    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _warn_unservable(registry: Any, move: Any) -> None:
    """A warning line when the alias now points at a version without model.onnx, or without model.int8.onnx where
    the version it replaced had one (a server run with --int8 is likely): a server following the alias cannot load
    it and keeps serving its model, while the registry names the new one."""
    version = registry.resolve(move.to_ref)
    missing, export, server = "model.onnx", "sightline export", f"a server following {move.alias}"
    if (Path(version.path) / "model.onnx").is_file():
        before = {v.ref: v for v in registry.versions()}.get(move.from_ref)  # not fetched from an fsspec registry
        if before is None or not (Path(before.path) / "model.int8.onnx").is_file() or \
                (Path(version.path) / "model.int8.onnx").is_file():
            return
        # only a server run with --int8 needs it: one without swapped as usual (the warning said every server stayed)
        missing, export, server = (f"model.int8.onnx (which {before.ref} has)", "sightline export --int8",
                                   f"a server following {move.alias} with --int8")
    err_console.print(f"[yellow]warning:[/] {version.ref} has no {missing}: {server} keeps "
                      f"serving {move.from_ref or 'nothing'} until it has one; run `{export} "
                      f"{escape(str(version.source))}` and `sightline registry add` it again.", highlight=False,
                      soft_wrap=True)


def _print_move(move: Any, as_json: bool) -> None:
    if as_json:
        print_json(move.to_dict())
        return
    forced = " [red](forced past a failed challenge)[/]" if move.forced else ""
    why = f": {escape(move.reason)}" if move.reason else ""  # --by and --reason are the user's: "[/x]" was a
    console.print(f"{move.at} {move.alias} {move.action} {move.from_ref or '(unset)'} -> {move.to_ref} by "  # traceback
                  f"{escape(move.by)}{why}{forced}", highlight=False)
