"""The API docs at /docs work without internet: Swagger UI comes from the package's own static files (FastAPI's
default page loads it from a CDN and stayed blank offline). Checked in Debian's Chromium with every request that
leaves the machine refused."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import make_bundle, serving

sys.path.insert(0, str(Path(__file__).resolve().parent))
from in_chromium import chromium_page


def test_docs_render_every_route_with_no_request_leaving_the_machine(tmp_path):
    with serving(make_bundle(tmp_path), database_url=f"sqlite:///{tmp_path / 'db.sqlite'}") as client:
        html = client.get("/docs")
        assert html.status_code == 200 and "/ui/static/swagger-ui-bundle.js" in html.text
        assert "http://" not in html.text and "https://" not in html.text  # no CDN, no external favicon
        assert client.get("/redoc").status_code == 404  # ReDoc is CDN-only: not offered
        for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
            asset = client.get(f"/ui/static/{name}")  # no key, no session: the docs page is public, as before
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        base = str(client.base_url).rstrip("/")
        with chromium_page() as (page, errors):
            outside: list[str] = []

            def offline(route) -> None:
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=15_000)
            paths = set(page.locator(".opblock-summary-path").all_inner_texts())
            assert {"/v1/predict", "/v1/model", "/v1/review", "/healthz"} <= {p.strip() for p in paths}, paths
            assert outside == [] and errors == [], (outside, errors)
