"""The challenge's evidence on disk: `challenge.json` (what `challenge` returns) and ONE self-contained
`challenge.html` (inline CSS, plots as base64 PNGs, no external asset: it opens from disk, offline), built from
sightline/loop/templates/challenge.html.j2 (autoescaped).

Plots: the bootstrap distribution of the accuracy difference per split (with 0 and the allowed drop marked) and
the per-class recall change on the frozen test split (with the allowed drop marked).
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.evaluate.report import figure_png, template_environment

if TYPE_CHECKING:
    import jinja2

__all__ = ["plots", "render_report", "write_report"]


def plots(result: dict[str, Any], bootstrap_samples: dict[str, np.ndarray]) -> dict[str, str]:
    """name -> base64 PNG: "difference" (bootstrap histograms, one panel per split) and "recall" (per-class recall
    change on test). Matplotlib's Agg backend; nothing is shown."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    rule = result["rule"]
    names = [n for n in result["splits"] if n in bootstrap_samples]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            acc = result["splits"][name]["accuracy"]
            n = acc["n_images"]
            # A resampled difference is a whole number of images over n: bins on that grid (a few grid steps wide
            # when the range is long), so no bin collects two values and its neighbour none.
            k = np.round(bootstrap_samples[name] * n).astype(np.int64)
            step = max(1, int(np.ceil((k.max() - k.min() + 1) / 60)))
            edges = (np.arange(k.min(), k.max() + step + 1, step) - 0.5) * 100 / n
            ax.hist(k * 100 / n, bins=edges, color="#7a8bb0")
            ax.axvline(0, color="#1d2330", lw=1)
            ax.axvline(acc["difference"] * 100, color="#2563eb", lw=2, label="observed")
            ax.axvspan(acc["low"] * 100, acc["high"] * 100, color="#2563eb", alpha=0.12,
                       label=f"{acc['level']:.0%} interval")
            if name == "test":
                ax.axvline(-rule["max_test_drop"] * 100, color="#d64545", ls="--", lw=1.5, label="allowed drop")
            ax.set_title(f"{name}: {acc['n_images']} images")
            ax.set_xlabel("challenger - champion accuracy (points)")
            ax.set_ylabel("bootstrap resamples")
            ax.legend(fontsize=8)
        out["difference"] = figure_png(fig, dpi=100)
    recall = result["splits"]["test"]["per_class_recall"]
    rows = [(c, r["change"]) for c, r in recall.items() if r["change"] is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(rows) + 2), 3.2))
        limit = -rule["max_class_recall_drop"] * 100
        values = [v * 100 for _, v in rows]
        ax.bar([c for c, _ in rows], values, color=["#d64545" if v < limit - 1e-9 else "#1f9d55" for v in values])
        ax.axhline(0, color="#1d2330", lw=1)
        ax.axhline(limit, color="#d64545", ls="--", lw=1.5, label="allowed drop")
        ax.set_ylabel("recall change on test (points)")
        ax.tick_params(axis="x", rotation=45 if len(rows) > 6 else 0)
        ax.legend(fontsize=8)
        out["recall"] = figure_png(fig, dpi=100)
    return out


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f} %"


def _pts(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):+.1f}"


@cache
def _environment() -> jinja2.Environment:
    env = template_environment("sightline.loop", keep_trailing_newline=False)
    env.filters.update(pct=_pct, pts=_pts, fmt=format)
    return env


def render_report(result: dict[str, Any], *, bootstrap_samples: dict[str, np.ndarray] | None = None) -> str:
    """challenge.html as text (`result`: what `challenge` returns; `bootstrap_samples`: split -> the (B,)
    resampled differences, for the histogram; without them that plot is left out)."""
    figs = plots(result, bootstrap_samples or {})
    return _environment().get_template("challenge.html.j2").render(r=result, figs=figs)


def write_report(result: dict[str, Any], out_dir: str | Path, *,
                 bootstrap_samples: dict[str, np.ndarray] | None = None) -> dict[str, Path]:
    """Write OUT/challenge.json and OUT/challenge.html (each atomically: a temporary file, then a rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "challenge.json", "html": out_dir / "challenge.html"}
    texts = {"json": json.dumps(result, indent=2, default=_plain) + "\n",
             "html": render_report(result, bootstrap_samples=bootstrap_samples)}
    for key, path in files.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(texts[key])
        tmp.replace(path)
    return files


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to challenge.json")
