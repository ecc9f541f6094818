"""The audit as one self-contained HTML page: a summary table, then each finding with base64 thumbnails."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from sightline.data.findings import AuditResult, Finding
from sightline.data.images import load_image
from sightline.data.inputs import shown_name
from sightline.errors import ImageError

__all__ = ["write_html"]

THUMB = 112  # pixels, longer side
MAX_FINDINGS_PER_KIND = 40  # the page stays small; audit.json has them all
MAX_THUMBS_PER_FINDING = 4

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
.finding{border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0}
.thumbs{display:flex;gap:8px;flex-wrap:wrap}.thumbs figure{margin:0;font-size:11px;max-width:140px;word-break:break-all}
img{display:block;border:1px solid #999}.none{color:#888}code{background:#f4f4f4;padding:1px 4px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#fafafa;padding:6px;margin:6px 0 0}
"""


def _thumb(path: Path) -> str | None:
    try:
        image = load_image(path, draft=(THUMB, THUMB))
    except ImageError:
        return None
    image.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _headline(finding: Finding) -> str:
    """A line above the thumbnails where the detail has one worth reading first (a label issue's suggestion)."""
    if finding.kind != "label_issue":
        return ""
    d = finding.detail
    return (f"<p>#{d['rank']}: labelled <b>{html.escape(d['given'])}</b> &rarr; looks like "
            f"<b>{html.escape(d['suggested'])}</b> (out-of-fold probability {d['p_suggested']:.2f}; "
            f"of the given label {d['p_given']:.2f})</p>")


def write_html(result: AuditResult, path: str | Path) -> Path:
    """Write the page for `result` (thumbnails read from `result.root`) and return its path."""
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>Sightline audit</title><style>{_CSS}</style>",
             f"<h1>Data audit of <code>{esc(shown_name(result.root))}</code></h1>",
             f"<p>{result.n_images} images. Class counts: {esc(json.dumps(result.class_counts))}</p>",
             "<table><tr><th>finding</th><th>count</th></tr>"]
    parts += [f"<tr><td><a href='#{k}'>{k}</a></td><td>{n}</td></tr>" for k, n in result.counts.items()]
    parts.append("</table>")
    check = result.label_check
    if check is not None:  # what the label check did, so an empty label_issue row is not read as "all labels right"
        said = check["skipped"] or (f"{check['n_checked']} images checked in {check['folds']} folds with "
                                    f"{check['model'].get('arch', '?')} features; out-of-fold accuracy "
                                    f"{check['oof_accuracy']}; suggestions in {check.get('suggestions', '-')}")
        parts.append(f"<p>Label check: {esc(said)}</p>" + "".join(f"<p class='none'>{esc(n)}</p>" for n in check["notes"]))
    for kind, n in result.counts.items():
        if not n:
            continue
        parts.append(f"<h2 id='{kind}'>{kind} ({n})</h2>")
        shown = [f for f in result.findings if f.kind == kind][:MAX_FINDINGS_PER_KIND]
        for f in shown:
            figures = []
            for p in f.paths[:MAX_THUMBS_PER_FINDING]:
                uri = _thumb(result.root / p)
                img = f"<img src='{uri}' alt=''>" if uri else "<div class='none'>(no preview)</div>"
                figures.append(f"<figure>{img}<figcaption>{esc(p)}</figcaption></figure>")
            more = f"<p>and {len(f.paths) - MAX_THUMBS_PER_FINDING} more</p>" if len(f.paths) > MAX_THUMBS_PER_FINDING else ""
            parts.append(f"<div class='finding'>{_headline(f)}<div class='thumbs'>{''.join(figures)}</div>{more}"
                         f"<pre>{esc(json.dumps(f.detail, indent=1, default=str))}</pre></div>")
        if n > len(shown):
            parts.append(f"<p>{n - len(shown)} more in audit.json</p>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
