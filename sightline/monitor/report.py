"""The monitoring report: `monitor.json` and ONE self-contained `monitor.html` (inline CSS, plots as base64 PNGs;
it opens from disk with nothing else), from the report dict `sightline.serve.monitoring.build_report` returns.

Plots (each only when there are windows to draw): p-values over time with the alpha line, confidence histogram
per window against the reference, class mix over time, unknown rate against the validation rate, image-statistic
shifts, label-free against measured accuracy.

Example:
    >>> json_path, html_path = write_report(report, "runs/demo/monitor")
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

__all__ = ["plots", "render_html", "write_report"]

TESTS = ("softmax_ks", "feature_mmd", "image_stats", "class_mix", "unknown_rate")
MAX_HISTOGRAMS = 12  # the confidence histograms of the last this many windows
P_FLOOR = 1e-6  # p-values are drawn no lower than this on the log axis


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(w: dict[str, Any]) -> str:
    if w["kind"] == "block":
        return f"{w['first_id']}-{w['last_id']}" if w["first_id"] is not None else "-"
    return w["start"][5:16].replace("T", " ") if w["kind"] == "hour" else w["start"][:10]


def plots(report: dict[str, Any]) -> dict[str, str]:
    """name -> base64 PNG of every plot the report's windows allow (none without windows)."""
    windows = report.get("windows") or []
    if not windows:
        return {}
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(windows))
    labels = [_label(w) for w in windows]
    alpha = report["window"]["alpha"]
    tick = max(1, len(windows) // 12)

    def axes(title: str, ylabel: str, size: tuple[float, float] = (8, 3)):
        fig, ax = plt.subplots(figsize=size)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xticks(x[::tick], labels[::tick], rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
        return fig, ax

    out: dict[str, str] = {}
    fig, ax = axes("p-values per window (tests against the reference profile)", "p-value (log)")
    for name in TESTS:
        p = [w["tests"].get(name, {}).get("p_value") if w["tested"] else None for w in windows]
        if any(v is not None for v in p):
            ax.plot(x, [np.nan if v is None else max(v, P_FLOOR) for v in p], marker=".", lw=1, label=name)
    pw = [w["p_value"] if w["tested"] else None for w in windows]
    ax.plot(x, [np.nan if v is None else max(v, P_FLOOR) for v in pw], marker="o", color="black", lw=2,
            label="window (Bonferroni over the driving tests)")
    ax.axhline(alpha, color="red", ls="--", lw=1, label=f"alpha = {alpha}")
    untested = [i for i, w in enumerate(windows) if not w["tested"]]
    if untested:
        ax.plot(untested, [1.0] * len(untested), "x", color="grey", label="not tested (too few predictions)")
    ax.set_yscale("log")
    ax.set_ylim(P_FLOOR / 2, 1.5)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    out["p_values"] = _png(fig)

    shown = windows[-MAX_HISTOGRAMS:]
    cols = min(4, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows), squeeze=False, sharex=True)
    for ax, w in zip(grid.flat, shown):
        hist = w["confidence_hist"]
        edges = np.asarray(hist["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        win, ref = np.asarray(hist["counts"], float), np.asarray(hist["reference"], float)
        ax.bar(centres, win / max(win.sum(), 1), width=edges[1] - edges[0], alpha=0.6, label="window")
        ax.step(edges[1:], ref / max(ref.sum(), 1), where="pre", color="black", lw=1, label="reference")
        ax.set_title(f"{_label(w)} (n={w['n']})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(grid.flat)[len(shown):]:
        ax.axis("off")
    grid.flat[0].legend(fontsize=6)
    fig.suptitle("top-1 calibrated confidence per window (share of predictions)", fontsize=10)
    fig.tight_layout()
    out["confidence"] = _png(fig)

    classes = report["bundle"]["classes"]
    fig, ax = axes("predicted class mix per window (R = reference)", "share")
    ref_mix = windows[0]["reference_class_mix"]
    bottom = np.zeros(len(windows) + 1)
    xs = np.concatenate([[-1.5], x])
    for c in classes:
        share = np.array([ref_mix.get(c, 0.0)] + [w["class_mix"].get(c, 0.0) for w in windows])
        ax.bar(xs, share, bottom=bottom, width=0.8, label=c)
        bottom += share
    ax.set_xticks(np.concatenate([[-1.5], x[::tick]]), ["R"] + labels[::tick], rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    out["class_mix"] = _png(fig)

    rate = [w.get("unknown_rate") for w in windows]
    if any(v is not None for v in rate):
        fig, ax = axes("unknown rate per window (open-set score above the profile's threshold)", "share unknown")
        ax.plot(x, [np.nan if v is None else v for v in rate], marker="o", label="window")
        ref = windows[0].get("reference_unknown_rate")
        if ref is not None:
            ax.axhline(ref, color="black", ls="--", lw=1, label=f"validation rate {ref:.3f}")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        out["unknown_rate"] = _png(fig)

    stats = sorted({k for w in windows for k, v in w.get("image_stats", {}).items() if "shift_iqr" in v})
    if stats:
        fig, ax = axes("image statistics: (window median - reference median) / reference IQR", "shift (IQRs, symlog)")
        for name in stats:
            ax.plot(x, [w["image_stats"].get(name, {}).get("shift_iqr", np.nan) for w in windows], marker=".",
                    label=name)
        ax.axhline(0, color="black", lw=1)
        ax.set_yscale("symlog", linthresh=1.0)  # a blur or noise moves sharpness by 1,000s of IQRs, size by 0.1
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        out["image_stats"] = _png(fig)

    fig, ax = axes("accuracy: label-free estimate vs reviewer labels", "accuracy")
    est = [w["expected_accuracy"] for w in windows]
    ax.plot(x, [e["expected_accuracy"] if e["n"] else np.nan for e in est], marker="o",
            label="label-free (mean calibrated top-1 probability)")
    ax.fill_between(x, [e["low"] if e["n"] else np.nan for e in est], [e["high"] if e["n"] else np.nan for e in est],
                    alpha=0.2)
    measured = [(i, w["measured_accuracy"]) for i, w in enumerate(windows) if w.get("measured_accuracy")]
    if measured:
        mi = np.array([i for i, _ in measured])
        acc = np.array([m["accuracy"] for _, m in measured])
        err = np.array([[m["accuracy"] - m["low"], m["high"] - m["accuracy"]] for _, m in measured]).T
        ax.errorbar(mi + 0.1, acc, yerr=err, fmt="s", color="darkred", capsize=3,
                    label="measured on reviewer labels (Wilson 95 %)")
        ax.plot(mi - 0.1, [m["expected_on_labelled"] for _, m in measured], "^", color="grey",
                label="label-free on the same labelled images")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    out["accuracy"] = _png(fig)
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ddd; padding: 3px 6px; }
th { background: #f4f4f4; } .notice { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.6em 1em; }
.sig { background: #fde2e2; } .untested { color: #888; } img.plot { max-width: 100%; display: block; margin: 0.6em 0; }
code { background: #f4f4f4; padding: 0 3px; }
"""

_PLOT_TITLES = {
    "p_values": "Drift tests over time",
    "confidence": "Confidence histograms",
    "class_mix": "Class mix over time",
    "unknown_rate": "Unknown rate",
    "image_stats": "Image-statistic shifts",
    "accuracy": "Label-free and measured accuracy",
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


def render_html(report: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The report as one HTML page (plots from `plots(report)` unless given)."""
    images = plots(report) if images is None else images
    e = html.escape
    b, w = report["bundle"], report["window"]
    size = f"blocks of {w['size']} predictions" if w["kind"] == "block" else f"calendar {w['kind']}s (UTC)"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Sightline monitor: {e(b['name'])} v{e(b['version'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Monitoring report: {e(b['name'])} v{e(b['version'])}</h1>",
        f"<p>Bundle <code>{e(b['path'])}</code>, reference profile <code>{e(report['profile']['fingerprint'])}</code> "
        f"({report['profile']['n_images']} validation images), database <code>{e(report['database'])}</code>"
        f"{', since ' + e(report['since']) if report.get('since') else ''}. Created {e(report['created'])}.</p>",
        f"<p>{report['n_monitored']} of {report['n_predictions']} stored predictions compared with the profile, in "
        f"{size}. A window with fewer than {w['min_window']} predictions is not tested. Each test runs at alpha = "
        f"{w['alpha']} with its own correction (Bonferroni over classes for the softmax KS test, Holm over the image "
        f"statistics); a window is significant when a driving test (softmax_ks, feature_mmd, image_stats) is, after "
        f"Bonferroni over those that ran. Class mix and unknown rate explain a drift; they do not raise it. An alert "
        f"fires after {w['consecutive']} consecutive significant windows and clears after as many clean ones.</p>",
    ]
    for message in report.get("messages", []):
        parts.append(f"<p class='notice'>{e(message)}</p>")
    if report.get("alerts"):
        parts.append("<h2>Alerts recorded by the service</h2><table><tr><th>alert</th><th>state</th>"
                     "<th>fired at window</th><th>cleared at window</th><th>significant streak</th>"
                     "<th>events</th><th>undelivered</th></tr>")
        for name, a in report["alerts"].items():
            parts.append(f"<tr class='{'sig' if a['active'] else ''}'><td>{e(name)}</td>"
                         f"<td>{'RAISED' if a['active'] else 'clear'}</td><td>{_fmt(a['fired_at'])}</td>"
                         f"<td>{_fmt(a['cleared_at'])}</td><td>{_fmt(a['significant_streak'])}</td>"
                         f"<td>{_fmt(a['sequence'])}</td><td>{_fmt(a['pending'])}</td></tr>")
        parts.append("</table>")
    for name, b64 in images.items():
        parts.append(f"<h2>{_PLOT_TITLES.get(name, name)}</h2>"
                     f"<img class='plot' alt='{e(name)}' src='data:image/png;base64,{b64}'>")
    if report.get("windows"):
        parts.append("<h2>Windows</h2><table><tr><th>window</th><th>start</th><th>end</th><th>n</th>"
                     "<th>p (window)</th><th>significant tests</th><th>unknown rate</th><th>mean confidence</th>"
                     "<th>label-free accuracy</th><th>measured accuracy (n)</th><th>alert</th></tr>")
        for win in report["windows"]:
            tests = ", ".join(k for k, t in win.get("tests", {}).items() if t.get("significant")) or "-"
            if not win["tested"]:
                tests = e(win["reason"] or "not tested")
            m = win.get("measured_accuracy")
            cls = "untested" if not win["tested"] else ("sig" if win["significant"] else "")
            parts.append(
                f"<tr class='{cls}'><td>{e(_label(win))}{' (partial)' if win.get('partial') else ''}</td>"
                f"<td>{e(win['start'])}</td><td>{e(win['end'])}</td><td>{win['n']}</td><td>{_fmt(win['p_value'])}</td>"
                f"<td>{tests}</td><td>{_fmt(win.get('unknown_rate'))}</td><td>{_fmt(win.get('mean_confidence'))}</td>"
                f"<td>{_fmt(win['expected_accuracy'].get('expected_accuracy'))}</td>"
                f"<td>{_fmt(m['accuracy']) + ' (' + str(m['n']) + ')' if m else '-'}</td>"
                f"<td>{e(win.get('alert_event') or ('raised' if win.get('alert_active') else ''))}</td></tr>")
        parts.append("</table><p>Measured accuracy uses reviewers' labels, which come from the review queue (low "
                     "confidence and unknown predictions), not from a random sample: compare it with the label-free "
                     "estimate on the same images (the grey triangles), not with the window's.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write `out/monitor.json` and `out/monitor.html`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "monitor.json", out / "monitor.html"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path
