"""`sightline monitor`: drift, unknown rate and accuracy of a served bundle, from the service's database."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import typer

from rich.markup import escape

from sightline._cli.common import console, fail, print_json

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """'24h', '7d', '90m', '2w' (before now) or an ISO date / date-time (UTC unless it names a zone)."""
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(text.strip())
    if match:
        try:
            return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        except OverflowError:  # past year 1 (or beyond a timedelta): a traceback before
            raise fail(f"--since {text!r} reaches before year 1; use a shorter duration (24h, 7d, 90m, 2w) or an "
                       "ISO date.") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise fail(f"--since {text!r} is neither a duration (24h, 7d, 90m, 2w) nor an ISO date "
                   "(2026-11-29 or 2026-11-29T08:00).") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""

    @app.command("monitor")
    def monitor_cmd(
        bundle: Path = typer.Argument(..., help="RUN or bundle folder (with its reference profile, reference.npz), "
                                      "or with a database a registry version or alias (champion) (then pass --out)."),
        database: str | None = typer.Option(
            None, "--database", "--database-url",
            help="SQLAlchemy URL of the service's database (default SIGHTLINE_DATABASE_URL, else the bundle's "
                 "sightline.db).",
        ),
        since: str | None = typer.Option(None, "--since", help="Only predictions after this: 24h, 7d or an ISO date."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default RUN/monitor)."),
        window: str = typer.Option("block", "--window", help="block (N predictions each), hour or day (UTC)."),
        size: int | None = typer.Option(
            None, "--size", min=2, help="Predictions per block window (default SIGHTLINE_MONITOR_WINDOW, else the "
            "spec's monitor.window, else 500)."),
        min_window: int | None = typer.Option(
            None, "--min-window", min=2, help="Smaller windows are shown but not tested (default "
            "SIGHTLINE_MONITOR_MIN_WINDOW, else the spec's, else 50)."),
        alpha: float | None = typer.Option(
            None, "--alpha", min=1e-6, max=0.5, help="False-alarm rate per window (default "
            "SIGHTLINE_MONITOR_ALPHA, else the spec's, else 0.05)."),
        consecutive: int | None = typer.Option(
            None, "--consecutive", min=1, help="K significant windows in a row raise an alert (default "
            "SIGHTLINE_MONITOR_CONSECUTIVE, else the spec's, else 2)."),
        spec: Path | None = typer.Option(
            None, "--spec", help="The data's sightline.yaml (or its data folder): its monitor: section sets the "
            "window settings as it does for `sightline serve --spec`; a SIGHTLINE_MONITOR_* variable wins over it, "
            "an option here over both (default SIGHTLINE_SPEC)."),
        as_json: bool = typer.Option(False, "--json", help="Print monitor.json to stdout instead of a summary."),
        images: Path | None = typer.Option(
            None, "--images", help="The service's kept-image folder, for example thumbnails (default "
            "SIGHTLINE_IMAGE_STORE, else BUNDLE/images; none there: no thumbnails)."),
    ) -> None:
        """Compare the predictions the service stored with the bundle's reference profile, window by window:
        drift tests (p-values), unknown rate, confidence, class mix, image statistics, label-free and measured
        accuracy. Writes monitor.json and a self-contained monitor.html."""
        import os
        from contextlib import nullcontext

        from sightline.bundle import resolve_bundle_dir
        from sightline.monitor.report import (add_bundle_match, kept_images, raised_by, verdict, verdict_blocks,
                                              write_report)
        from sightline.serve.monitoring import build_report
        from sightline.serve.settings import database_url, load_monitor_settings
        from sightline.storage.images import LocalImageStore

        given = database or os.environ.get("SIGHTLINE_DATABASE_URL")
        if not bundle.exists() and given:  # `monitor champion`: the version the service follows
            from sightline._cli.loop import model_folder

            bundle = model_folder(str(bundle), "bundle", given, os.environ.get("SIGHTLINE_REGISTRY"))
        folder = resolve_bundle_dir(bundle)
        copy = _registry_copy(folder, database, out)
        if database is not None:  # named on purpose: a typo must not read as "no predictions yet"
            database = _existing_database(database)
        url = database_url(database or os.environ.get("SIGHTLINE_DATABASE_URL"), folder)
        # as the service reads them: an option here > SIGHTLINE_MONITOR_* > the spec's monitor: section > default
        ms = load_monitor_settings(spec=spec, monitor_window=size, monitor_min_window=min_window, monitor_alpha=alpha,
                                   monitor_consecutive=consecutive)
        report = build_report(folder, url, since=parse_since(since) if since else None, window=window,
                              size=ms.monitor_window, min_window=ms.monitor_min_window, alpha=ms.monitor_alpha,
                              consecutive=ms.monitor_consecutive, permutations=ms.monitor_permutations)
        report["spec"] = str(ms.spec) if ms.spec is not None else None  # where the window settings came from
        add_bundle_match(report, url)  # the alerts are the database's: says when no prediction is this bundle's
        report["verdict"] = verdict(report)  # what happened, in sentences: the page and the summary below open with it
        kept = images or Path(os.environ.get("SIGHTLINE_IMAGE_STORE") or _default_images(folder, copy, url))
        with kept_images(url, LocalImageStore(kept)) if kept.is_dir() else nullcontext() as fetch:
            json_path, html_path = write_report(report, out or folder.parent / "monitor", fetch=fetch)
        if as_json:
            print_json(report)
            return
        for message in report["messages"]:
            console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)
        for text, items in verdict_blocks(report["verdict"]):
            console.print(escape(text), highlight=False)
            for item in items:
                console.print(f"  - {escape(item)}", highlight=False)
        complete = [w for w in report["windows"] if not w.get("partial")]  # as the verdict and the service count
        tested = [w for w in complete if w["tested"]]
        drifted = [w for w in tested if w["significant"]]
        filling = len(report["windows"]) - len(complete)
        console.print(f"{report['n_monitored']} monitored predictions, {len(report['windows'])} windows, {len(tested)} "
                      f"tested, {len(drifted)} significant" + ("; the newest window, still filling, is not counted "
                                                               "until complete" if filling else ""), highlight=False)
        alerts = [*report["alerts"].items(), *((a["name"], a) for a in report["other_alerts"])]
        for name, alert in alerts:
            if alert["active"] and alert["about_this_bundle"]:
                console.print(f"[bold red]alert raised:[/] {name} (since window {alert['fired_at']})", highlight=False)
            elif alert["active"] and alert.get("attributed_by") == "profile":  # the row names the model
                mine = report["profile"]["fingerprint"]
                console.print(f"the service's alert {name} is raised (since window {alert['fired_at']}) by another "
                              f"model, {escape(raised_by(alert))}, not by this bundle (profile {mine})",
                              highlight=False)
            elif alert["active"]:  # a row written before alerts recorded their model
                console.print(f"the service's alert {name} is raised (since window {alert['fired_at']}), not by this "
                              "bundle's predictions: none are in the database", highlight=False)
        console.print(escape(f"wrote {json_path} and {html_path}"), highlight=False)


def _default_images(folder: Path, copy: bool, url: str) -> Path:
    """Where the service keeps its images when SIGHTLINE_IMAGE_STORE is unset: BUNDLE/images for `serve BUNDLE`;
    beside the registry's folder for a registry copy (as `serve --registry`), and so beside a SQLite database as well
    when BUNDLE is the folder a served registry version was added from (as `feedback export` looks for them)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    first = (folder.parent.parent if copy else folder) / "images"
    if first.is_dir():
        return first
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return first
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        beside = Path(parsed.database).expanduser().resolve().parent / "images"
        if beside.is_dir():
            return beside
    return first


def _registry_copy(folder: Path, database: str | None, out: Path | None) -> bool:
    """Whether `folder` is a registry's copy of a version (ROOT/<hash>/); one-line error when the command would then
    read or write inside the registry: with no database it opened (and created, empty) ROOT/<hash>/sightline.db and
    said no prediction was served, and the report went to ROOT/monitor/, shared by every version."""
    import os

    from sightline.bundle import is_registry_copy

    if not is_registry_copy(folder):
        return False
    if not (database or os.environ.get("SIGHTLINE_DATABASE_URL")):
        raise fail(f"'{folder}' is a registry copy, which holds no database; pass --database (the service's, as given "
                   "to `sightline serve --registry`) or set SIGHTLINE_DATABASE_URL.")
    if out is None:
        raise fail(f"'{folder}' is a registry copy, which stays as it was added; pass --out DIR for monitor.json and "
                   "monitor.html.")
    return True


def _existing_database(database: str) -> str:
    """--database as a URL (a plain path is a SQLite file, as `serve --database` takes it); a SQLite file that
    does not exist is refused instead of created empty."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from sightline.storage.store import as_database_url

    database = as_database_url(database)
    try:
        parsed = make_url(database)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return database  # the store says what is wrong with it
    name = parsed.database
    if parsed.get_backend_name() == "sqlite" and name and name != ":memory:" and not Path(name).exists():
        raise fail(f"database file '{name}' does not exist; pass the service's database (<bundle>/sightline.db, "
                   "or SIGHTLINE_DATABASE_URL).")
    return database
