"""`sightline` commands of the serve stage: serve, keys create|list|revoke."""
from __future__ import annotations

from pathlib import Path

import typer

from sightline._cli.common import console, err_console, fail, print_json


def _store(bundle: Path | None, database_url: str | None, *, keeps: str | None = None, creates: bool = True):
    """The service's database. `keeps`: what this command writes there for later (its keys), refused in an
    in-memory SQLite database, which forgets it when the command ends. A plain path is a SQLite file; unless
    `creates`, one that does not exist is refused (a typo made an empty database and listed nothing)."""
    import os

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from sightline.serve.settings import database_url as resolve_url
    from sightline.storage.store import Store, as_database_url

    bundle = bundle or (Path(os.environ["SIGHTLINE_BUNDLE"]) if os.environ.get("SIGHTLINE_BUNDLE") else None)
    url = resolve_url(database_url or os.environ.get("SIGHTLINE_DATABASE_URL"), bundle)
    if "://" not in url and not creates and not Path(url).expanduser().exists():  # a plain path: a SQLite file
        raise fail(f"database file '{url}' does not exist; pass the service's database (--database-url, a "
                   "SQLite file or a sqlite:/// or postgresql:// URL, or SIGHTLINE_DATABASE_URL).")
    url = as_database_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        parsed = None  # not a URL at all: Store says so in its own words
    if keeps and parsed is not None and parsed.get_backend_name() == "sqlite" and (
            parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"):
        raise fail(f"--database-url '{url}' is an in-memory database: {keeps} would be lost when this command ends; "
                   "pass the service's database (a sqlite:///file.db path or a server URL).")
    return Store(url)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""

    @app.command("serve")
    def serve_cmd(
        bundle: Path | None = typer.Argument(None, help="RUN or bundle folder (or --registry)."),
        host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1 or SIGHTLINE_HOST)."),
        port: int | None = typer.Option(None, "--port", help="Port (default 8000 or SIGHTLINE_PORT)."),
        int8: bool = typer.Option(False, "--int8", help="Serve model.int8.onnx."),
        registry: str | None = typer.Option(
            None, "--registry", help="Serve the registry version --alias points to, from this registry folder (or "
            "fsspec URL, s3://...), and follow its promotions and rollbacks (or SIGHTLINE_REGISTRY)."),
        alias: str | None = typer.Option(None, "--alias", help="champion (default) or challenger (SIGHTLINE_ALIAS)."),
        database: str | None = typer.Option(
            None, "--database", help="SQLAlchemy URL of the service (and registry) database (SIGHTLINE_DATABASE_URL)."),
        shadow: str | None = typer.Option(
            None, "--shadow", help="Challenger scored in the background on a sample of traffic, never answered: a RUN "
            "or bundle folder, or with --registry an alias or version (challenger, v3); compare at GET /v1/shadow "
            "(SIGHTLINE_SHADOW)."),
        shadow_sample: float | None = typer.Option(
            None, "--shadow-sample", help="Share of predict requests the challenger scores (default 0.1; "
            "SIGHTLINE_SHADOW_SAMPLE)."),
        spec: Path | None = typer.Option(
            None, "--spec", help="A sightline.yaml (or the data folder holding it) whose monitor: section (window, "
            "min_window, alpha, consecutive, webhook_url) and review_below_confidence the service uses; "
            "SIGHTLINE_* variables win over it (SIGHTLINE_SPEC)."),
    ) -> None:
        """Serve a bundle, or a registry alias, over HTTP (FastAPI + uvicorn). Other settings come from SIGHTLINE_*
        variables."""
        import uvicorn

        from sightline.bundle import load_bundle
        from sightline.serve.app import create_app
        from sightline.serve.settings import load_settings

        overrides: dict = {}
        for name, value in (("bundle", bundle), ("host", host), ("port", port), ("registry", registry),
                            ("alias", alias), ("database_url", database), ("shadow", shadow),
                            ("shadow_sample", shadow_sample), ("spec", spec)):
            if value is not None:
                overrides[name] = value
        if int8:
            overrides["int8"] = True
        if database is not None:  # a plain path: a SQLite file
            from sightline.storage.store import as_database_url

            overrides["database_url"] = as_database_url(database)
        settings = load_settings(**overrides)
        from sightline.serve.web.session import check_secret_env

        check_secret_env()  # before loading or exporting anything: one line, exit 2
        if settings.registry is not None:
            from sightline.loop.registry import Registry
            from sightline.serve.swap import onnx_file, registry_version

            with Registry(settings.resolved_database_url(), root=settings.registry) as reg:
                version = registry_version(reg, settings.alias)
            b = load_bundle(version.path)
            if not onnx_file(settings, b).is_file():
                raise fail(f"{settings.alias} is {version.ref}, whose {onnx_file(settings, b)} is missing; export the "
                           f"bundle (`sightline export`) and add it to the registry again.")
            what = f"{b.name} v{b.version} ({settings.alias} = {version.ref}, following the registry)"
        else:
            b = load_bundle(settings.bundle)
            if settings.int8 and not b.int8_path.is_file():
                raise fail(f"{b.int8_path} is missing; run `sightline export {settings.bundle} --int8 --data DATA` "
                           f"first.")
            if not b.onnx_path.is_file():
                from sightline.optimize.export import export

                err_console.print(f"{b.onnx_path} is missing: exporting it now (parity checked) ...", markup=False)
                export(settings.bundle)
            what = f"{b.name} v{b.version}"
        _preflight(settings, b)
        if settings.shadow is not None:  # a bad challenger is a one-line error here, before the server starts
            from sightline.serve.shadow import check_classes, resolve_challenger

            challenger = resolve_challenger(settings)
            check_classes(challenger, b)
            what += (f", shadowed by {challenger.bundle.name} {challenger.version} on "
                     f"{100 * settings.shadow_sample:g}% of requests")
        if settings.spec is not None:
            what += f", settings from {settings.spec} beneath SIGHTLINE_* variables"
        store = _store(settings.bundle, settings.resolved_database_url())
        if settings.require_api_key and not store.list_keys():
            # the database this service reads: `--bundle BUNDLE` put a key given --database where it never looked
            import shlex

            from sightline.storage.store import safe_url

            where = (f"--database-url {shlex.quote(safe_url(settings.database_url))}" if settings.database_url
                     else f"--bundle {shlex.quote(str(settings.bundle))}")
            err_console.print(f"no API key yet: create one with `sightline keys create NAME {where}`.",
                              highlight=False, markup=False)
        store.close()
        host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address in a URL
        err_console.print(f"serving {what} on http://{host}:{settings.port} (docs at /docs)", highlight=False,
                          markup=False)
        from sightline.serve.protocol import uvicorn_options

        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            timeout_graceful_shutdown=30,
            log_level="info",
            **uvicorn_options(settings),  # a cap and a time limit on request heads (serve.protocol)
        )

    keys = typer.Typer(help="API keys of the service: create (shown once), list, revoke.", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    bundle_opt = typer.Option(None, "--bundle", help="Bundle whose database to use (or SIGHTLINE_BUNDLE).")
    url_opt = typer.Option(None, "--database-url", help="SQLAlchemy URL or SQLite file path (or "
                           "SIGHTLINE_DATABASE_URL).")

    @keys.command("create")
    def keys_create(
        name: str = typer.Argument(..., help="Who the key is for."),
        role: list[str] | None = typer.Option(
            None, "--role", help="predict, review or admin; repeat or comma-separate for several (default predict)."
        ),
        bundle: Path | None = bundle_opt,
        database_url: str | None = url_opt,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Create an API key. It is printed once and stored only as a hash."""
        from sightline.storage.store import parse_roles

        roles = parse_roles(role)
        key = _store(bundle, database_url, keeps="the key").create_key(name, roles)
        if as_json:
            print_json({"name": name, "roles": list(roles), "key": key})
        else:
            # markup off: a name is the user's text ("[/x]" was a MarkupError after the key was stored, never shown)
            err_console.print(f"API key for {name}, roles {', '.join(roles)} (shown once; send it as X-API-Key):",
                              markup=False, highlight=False)
            typer.echo(key)

    @keys.command("list")
    def keys_list(
        bundle: Path | None = bundle_opt,
        database_url: str | None = url_opt,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """List keys (name, prefix, created, revoked); the keys themselves are not stored."""
        rows = _store(bundle, database_url, keeps="the keys", creates=False).list_keys()
        if as_json:
            print_json(rows)
            return
        for r in rows:
            state = f"revoked {r['revoked']:%Y-%m-%d %H:%M}" if r["revoked"] else "active"
            console.print(f"{r['id']:>4}  {r['name']:<24} {r['prefix']}...  {','.join(r['roles']):<22} "
                          f"created {r['created']:%Y-%m-%d %H:%M}  {state}", markup=False, highlight=False)

    @keys.command("revoke")
    def keys_revoke(
        name: str = typer.Argument(..., help="Key name (revokes all its keys) or key prefix from `keys list`."),
        bundle: Path | None = bundle_opt,
        database_url: str | None = url_opt,
    ) -> None:
        """Revoke keys; the service refuses them within a few seconds (its key cache)."""
        n = _store(bundle, database_url, keeps="the revocation", creates=False).revoke_key(name)
        if n == 0:
            raise fail(f"no active key named or prefixed '{name}'; see `sightline keys list`.")
        console.print(f"revoked {n} key(s) for {name}", markup=False, highlight=False)


def _preflight(settings, bundle) -> None:
    """What would otherwise fail inside uvicorn, as a traceback from the app's startup or a bare errno line
    (exit 3 / 1): a damaged model.onnx, a host that does not resolve, a port already taken. One line and exit 2."""
    import socket

    from sightline.inference import open_engine

    if settings.keep_images:  # a file there: the server started, then kept no image
        from sightline.storage.images import open_image_store

        open_image_store(settings.resolved_image_store())
    with open_engine(bundle, backend="onnx-int8" if settings.int8 else "onnx", threads=1):
        pass  # ONNX Runtime parsed the graph: the server's own load will too
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise fail(f"--host '{settings.host}' cannot be resolved ({exc}); use an address such as 127.0.0.1 or "
                   "0.0.0.0.") from None
    if settings.port == 0:
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise fail(f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); choose another --port "
                       "or stop what is using it.") from None
