"""The evaluation report: ONE self-contained report.html (plots are base64 PNGs, the CSS is inline; it opens from
disk, no server) with a stakeholder summary on top (targets pass/fail, struggling classes, review workload,
failure modes, shortcut flags) and the details below; and MODEL_CARD.md in the bundle.

Both are built from an `EvaluationResult` with Jinja2 templates shipped in sightline/evaluate/templates/: the
report section by section (`SECTIONS`, one template each under templates/report/, HTML-escaped), then laid into
templates/report/page.html.j2; the model card from templates/model_card.md.j2 (Markdown, not escaped).

Example:
    >>> write_report(result, "eval/report.html", gallery=explanation.gallery)
    >>> render_section("summary", result)               # one section's HTML, e.g. for a test or another page
"""
from __future__ import annotations

import base64
import io
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sightline.bundle import Bundle

if TYPE_CHECKING:
    import jinja2

    from sightline.evaluate.result import EvaluationResult

__all__ = ["SECTIONS", "figure_png", "plots", "render_report", "render_section", "template_environment", "write_model_card",
           "write_report"]

# The report's sections, top to bottom; each is templates/report/<name>.html.j2 and shows nothing when the result
# has nothing for it (no seeds, no regions, no robustness run, no gallery).
SECTIONS = ("header", "summary", "seeds", "per_class", "precision_recall", "calibration", "robustness", "openset",
            "regions", "gallery", "footer")
_PLOTTED = frozenset({"per_class", "precision_recall", "calibration", "robustness", "regions"})  # sections with plots


def figure_png(fig: Any, *, dpi: int = 110) -> str:
    """A matplotlib figure as base64 PNG text (for an inline `data:` image); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(r: EvaluationResult) -> dict[str, str]:
    """name -> base64 PNG for every plot the metrics allow (confusion, pr, reliability, coverage, robustness,
    regions). Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    out: dict[str, str] = {}
    labels = r.confusion_matrix["labels"]
    k = len(labels)
    cm = np.asarray(r.confusion_matrix["matrix"])
    norm = np.asarray(r.confusion_matrix["normalized"])
    side = min(12, 2.5 + 0.55 * k)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({r.split}, {r.n_images} images; colour = share of the true class)")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    out["confusion"] = figure_png(fig)

    if r.pr_curves:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, curve in r.pr_curves.items():
            ap = r.per_class[name]["average_precision"]
            ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP {ap:.2f})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.02)
        ax.set_title("Precision-recall, one class vs the rest")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3)
        out["pr"] = figure_png(fig)

    rel = r.reliability
    if rel:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
        for key, label, color in (("before", f"before (ECE {r.ece_uncalibrated:.3f})", "tab:orange"),
                                  ("after", f"after T={r.temperature:.2f} (ECE {r.ece:.3f})", "tab:blue")):
            pts = [(c, a, k) for c, a, k in zip(rel[key]["confidence"], rel[key]["accuracy"], rel[key]["count"])
                   if c is not None]
            if pts:
                conf, acc, count = zip(*pts)
                # Marker area follows the images in the bin: a bin of 1 image at accuracy 0 or 1 must not look
                # as weighty as the bin holding most of the split (digits: 1 and 217 of 265).
                ax.plot(conf, acc, color=color, lw=1, alpha=0.6, label=label)
                ax.scatter(conf, acc, s=[max(4.0, 400.0 * k / sum(count)) for k in count], color=color, zorder=3)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title("Reliability diagram (marker area = images in the bin)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        out["reliability"] = figure_png(fig)

    review = r.review
    if review and review.get("curve"):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for curve, label, ls in ((review["curve"], r.split, "-"), (review.get("val_curve"), "val", ":")):
            if curve:
                pts = [(c, a) for c, a in zip(curve["coverage"], curve["accuracy"]) if a is not None]
                ax.plot(*zip(*pts), ls=ls, label=label)
        if review.get("review_confidence") is not None and review.get("accuracy_accepted") is not None:
            ax.scatter([review["coverage"]], [review["accuracy_accepted"]], color="red", zorder=3,
                       label=f"chosen: review below {review['review_confidence']:.2f}")
        ax.set_xlabel("coverage (share of images decided without a person)")
        ax.set_ylabel("accuracy of accepted predictions")
        ax.set_title("Coverage vs accuracy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        out["coverage"] = figure_png(fig)

    rob = r.robustness
    if rob and rob.get("results"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rows in rob["results"].items():
            ax.plot([0] + [row["severity"] for row in rows],
                    [rob["clean_accuracy"]] + [row["accuracy"] for row in rows], marker="o", label=name.replace("_", " "))
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Robustness ({rob['n_images']} images)")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        out["robustness"] = figure_png(fig)

    pg = r.pointing_game
    if pg and pg.get("per_class"):
        names = list(pg["per_class"])
        fig, ax = plt.subplots(figsize=(max(5, 1 + 0.8 * len(names)), 4))
        x = np.arange(len(names))
        rates = [pg["per_class"][c]["pointing_game"] for c in names]
        colors = ["tab:red" if pg["per_class"][c]["shortcut"] else "tab:blue" for c in names]
        ax.bar(x, rates, 0.6, color=colors)
        for xi, c, rate in zip(x, names, rates):
            ax.text(xi, min(rate + 0.03, 0.93), f"heat x{pg['per_class'][c]['energy_lift']:.1f}", ha="center", fontsize=8)
        ax.set_ylabel("share of heatmap peaks on the region")
        ax.axhline(0.5, color="red", ls="--", lw=1)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title("Does the model look at the region? (red: likely shortcut)")
        out["regions"] = figure_png(fig)
    return out


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f} %"


def _f3(v: Any) -> str:
    return "" if v is None else f"{float(v):.3f}"


def template_environment(package: str, *, keep_trailing_newline: bool = True) -> jinja2.Environment:
    """The Jinja2 templates of `package`'s templates/ folder: HTML ones (*.html.j2) autoescaped, Markdown not; a
    name the template does not know is an error, not an empty string; block tags leave no blank lines."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=keep_trailing_newline,
    )


@cache
def _environment() -> jinja2.Environment:
    """The templates of sightline/evaluate/templates/ (see `template_environment`)."""
    env = template_environment("sightline.evaluate")
    env.filters.update(pct=_pct, f3=_f3, fmt=format)  # fmt: Python's format spec, `x|fmt(".3f")`
    return env


def _context(r: EvaluationResult, *, gallery: list[dict[str, Any]], figs: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """What the section templates read: the result `r`, its plots, the gallery, and a few facts worked out here so
    the templates stay markup."""
    from sightline.evaluate.openset import section_context

    th = r.thresholds or {}
    details = th.get("details") or {}
    return {
        "r": r,
        "figs": plots(r) if figs is None else figs,
        "gallery": gallery,
        "openset": section_context(r.ood),  # --ood: histogram and example thumbnails
        # classes whose targets no threshold meets even on val
        "unreachable_classes": [c for c, d in details.items() if not d.get("reachable", True)],
        "review_target_unreachable": bool(th.get("review")) and not th["review"].get("reachable", True),
        "class_thresholds": [(c, t, (details.get(c) or {}).get("rule", ""))
                             for c, t in (th.get("class_thresholds") or {}).items()],
    }


def render_section(name: str, r: EvaluationResult, *, gallery: list[dict[str, Any]] | None = None,
                   figs: dict[str, str] | None = None) -> str:
    """One section of the report (a name of SECTIONS) as HTML; empty when the result has nothing for it. `figs`:
    `plots(r)` when already made (made here otherwise, for the sections that show plots)."""
    if figs is None and name not in _PLOTTED:
        figs = {}
    context = _context(r, gallery=gallery or [], figs=figs)
    return _environment().get_template(f"report/{name}.html.j2").render(context).strip()


def render_report(r: EvaluationResult, *, gallery: list[dict[str, Any]]) -> str:
    """The whole self-contained page: every section of SECTIONS in order, inside templates/report/page.html.j2."""
    from markupsafe import Markup

    env = _environment()
    context = _context(r, gallery=gallery)
    sections = [env.get_template(f"report/{name}.html.j2").render(context).strip() for name in SECTIONS]
    return env.get_template("report/page.html.j2").render(
        context, sections=[Markup(s) for s in sections if s])  # already escaped by their own templates


def write_report(r: EvaluationResult, path: str | Path, *, gallery: list[dict[str, Any]]) -> Path:
    """Write the self-contained HTML report (`gallery`: explain_split's rows, [] for none); returns its path."""
    from sightline.data.inputs import shown_name

    path = Path(path)
    # a path named in Latin-1 (the dataset's folder, an image) has no UTF-8 text: its bytes are written as \x escapes
    path.write_text(shown_name(render_report(r, gallery=gallery)), encoding="utf-8")
    return path


def write_model_card(r: EvaluationResult, bundle: Bundle) -> Path:
    """MODEL_CARD.md in the bundle folder: intended use, data, headline metrics with CIs, targets, thresholds,
    calibration, failure modes in plain words, explainability findings, limits."""
    assert bundle.path is not None
    from sightline.data.inputs import shown_name

    path = bundle.path / "MODEL_CARD.md"
    path.write_text(shown_name(_environment().get_template("model_card.md.j2").render(r=r, bundle=bundle)),
                    encoding="utf-8")
    return path
