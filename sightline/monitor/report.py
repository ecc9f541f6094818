"""The monitoring report: `monitor.json` and ONE self-contained `monitor.html` (inline CSS, plots as base64 PNGs,
thumbnails as base64 JPEGs; it opens from disk with nothing else), from the report dict
`sightline.serve.monitoring.build_report` returns, rendered from sightline/monitor/templates/monitor.html.j2
(autoescaped).

Plots (each only when there are windows to draw): p-values over time with the alpha line, confidence histogram
per window against the reference, class mix over time, unknown rate against the validation rate, image-statistic
shifts, label-free against measured accuracy. Where the service kept images (its content-addressed store,
`sightline.storage.images`), the image-statistic section shows thumbnails of the most shifted images of the
windows whose image statistics differ significantly from the reference (each window lists candidate prediction ids
per shifted statistic: `monitor.windows.summarize`).

`add_bundle_match` says whether the stored predictions come from the bundle given at all (its name and version, as
the service stores them, or its reference profile's fingerprint), and whose each alert is: alert state is kept per
model, keyed by the profile fingerprint of the model whose windows it counts, so the alert is the bundle's exactly
when that is the bundle's profile (`alert_about_bundle`); only a row written before alerts recorded it (fingerprint
None) falls back to "the bundle's when any stored prediction is the bundle's".

Example:
    >>> images = LocalImageStore("runs/demo/bundle/images")
    >>> with kept_images("sqlite:///runs/demo/bundle/sightline.db", images) as fetch:
    ...     json_path, html_path = write_report(report, "runs/demo/monitor", fetch=fetch)
"""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

    from sightline.storage.images import ImageStore

__all__ = ["verdict", "verdict_blocks", "add_bundle_match", "alert_about_bundle", "raised_by", "bundle_match", "stored_models", "plots",
           "thumbnail", "thumbnails", "kept_images", "render_html", "write_report"]

TESTS = ("softmax_ks", "feature_mmd", "image_stats", "class_mix", "unknown_rate")
MAX_HISTOGRAMS = 12  # the confidence histograms of the last this many windows
P_FLOOR = 1e-6  # p-values are drawn no lower than this on the log axis
THUMB_SIDE = 96  # thumbnails fit in this many pixels a side (JPEG, about 3 KB each)
THUMBS_PER_STATISTIC = 4  # kept images shown per shifted statistic and window
THUMB_WINDOWS = 6  # the last this many windows with a shifted statistic get thumbnails
MAX_NAMED_WINDOWS = 8  # the verdict names at most this many of the windows that differ (the latest ones)
MODELS_NAMED = 5  # the models a "no prediction matches" line names (most predictions first)
MAX_PIXELS = 40_000_000  # a kept file announcing more pixels is not decoded for a thumbnail (the service's cap)


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
    ax.axhline(P_FLOOR, color="grey", ls=":", lw=1, label=f"p below {P_FLOOR:g} drawn here")
    ax.set_yscale("log")
    ax.set_ylim(P_FLOOR / 2, 1.5)
    # beside the axes: inside, it covered the floor, where a strong drift's p-values are drawn
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
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
    shifted = [i for i, e in enumerate(est) if e.get("reliable") is False and e["n"]]
    if shifted:  # the estimate assumes validation's calibration, which the window's drift breaks
        ax.plot(shifted, [est[i]["expected_accuracy"] for i in shifted], "o", ms=10, mfc="white", mec="red", mew=2,
                label="not reliable: the window drifted (label a sample)")
    def measured_bars(points: list[tuple[int, dict]], shift: float, **style: Any) -> None:
        """Accuracy measured at windows `points` [(window index, {accuracy, low, high})], Wilson 95 % bars."""
        acc = np.array([m["accuracy"] for _, m in points])
        err = np.array([[m["accuracy"] - m["low"], m["high"] - m["accuracy"]] for _, m in points]).T
        ax.errorbar(np.array([i for i, _ in points]) + shift, acc, yerr=err, capsize=3, **style)

    measured = [(i, w["measured_accuracy"]) for i, w in enumerate(windows) if w.get("measured_accuracy")]
    if measured:
        measured_bars(measured, 0.1, fmt="s", color="darkred", label="measured on reviewer labels (Wilson 95 %)")
        ax.plot(np.array([i for i, _ in measured]) - 0.1, [m["expected_on_labelled"] for _, m in measured], "^",
                color="grey", label="label-free on the same labelled images")
        sliced = [(i, m["random_slice"]) for i, m in measured if (m.get("random_slice") or {}).get("n")]
        if sliced:
            measured_bars(sliced, 0.2, fmt="D", color="darkgreen",
                          label="measured on the random slice (unbiased, Wilson 95 %)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    out["accuracy"] = _png(fig)
    return out


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
    return str(value)


def _unreliable(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The windows whose label-free accuracy is marked not reliable (they drifted: `monitor.windows`)."""
    return [w for w in windows if (w.get("expected_accuracy") or {}).get("reliable") is False]


def _significant_tests(window: dict[str, Any]) -> str:
    return ", ".join(k for k, t in window.get("tests", {}).items() if t.get("significant"))


@cache
def _environment() -> jinja2.Environment:
    """sightline/monitor/templates/, autoescaped, a name the template does not know an error (the settings of
    `sightline.evaluate.report.template_environment`, which this layer may not import)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("sightline.monitor", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=_fmt, label=_label, raised_by=raised_by)
    env.globals.update(significant_tests=_significant_tests, unreliable=_unreliable)
    return env


# --- what happened, in words ------------------------------------------------------------------------------------
STAT_WORDS = {  # how an operator reads each image statistic (monitor.stats)
    "width": "image width (px)", "height": "image height (px)", "aspect": "aspect ratio (width / height)",
    "brightness": "brightness (0 black - 1 white)", "contrast": "contrast", "sharpness": "sharpness (low: blurred)",
    "flat_share": "share of flat, featureless areas (padding, a covered lens, clipped highlights)",
    "bytes_per_pixel": "file size per pixel (compression)", "jpeg_quality": "JPEG quality",
    "mode": "colour mode", "format": "file format",
}


def _num(value: float) -> str:
    """A statistic as a person reads it: 200 px, 1.33, 0.047."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else _fmt(value)


def _stat_words(name: str, shift: dict[str, Any]) -> str:
    what = STAT_WORDS.get(name, name)
    if "window_median" in shift:
        medians = f"{_num(shift['window_median'])}, reference {_num(shift['reference_median'])}"
        if abs(shift.get("shift_iqr") or 0.0) < 0.25:  # the typical image is as before: the spread differs
            spread, ref_spread = shift.get("window_iqr"), shift.get("reference_iqr")
            if spread is not None and ref_spread and spread < 0.25 * ref_spread:  # e.g. one camera, one image size
                return (f"{what} nearly the same in every image ({_num(shift['window_median'])}; the reference "
                        f"varies, middle half {_num(ref_spread)} wide, median {_num(shift['reference_median'])})")
            if spread is not None and ref_spread is not None and spread > 4 * max(ref_spread, 1e-12):
                return (f"{what} varies far more than in the reference (middle half {_num(spread)} wide, reference "
                        f"{_num(ref_spread)}; the median is about the same: {medians})")
            return f"{what} of some images (the median is about the same: {medians})"
        return f"{what} {_num(shift['window_median'])} (reference {_num(shift['reference_median'])}; medians)"
    ref = shift.get("reference_share")
    return (f"{what} {shift.get('window_top')} for {shift.get('window_share', 0):.0%} of the window"
            + (f" ({ref:.0%} of the reference)" if ref is not None else ""))


def _window_words(w: dict[str, Any]) -> list[str]:
    """What differs in one tested window, one sentence per finding, in the order an operator acts on them."""
    tests, out = w.get("tests") or {}, []
    sig = {name for name, t in tests.items() if t.get("significant")}
    if "unknown_rate" in sig:
        out.append(f"{w['unknown_rate']:.0%} of its images were rejected as 'unknown': unlike anything the model was "
                   f"trained on (validation: {w['reference_unknown_rate']:.1%}). Look at them in the review queue.")
    if "class_mix" in sig:
        mix = ", ".join(f"{c} {share:.0%} (reference {w['reference_class_mix'].get(c, 0.0):.0%})"
                        for c, share in w["class_mix"].items())
        out.append(f"The model predicts a different mix of classes: {mix}. Either what is photographed changed, or "
                   "the model is misreading it.")
    if "image_stats" in sig:
        parts = [pt["name"] for pt in tests["image_stats"].get("parts", []) if pt.get("significant")]
        shifts = w.get("image_stats") or {}
        said = "; ".join(_stat_words(name, shifts[name]) for name in parts if name in shifts)
        out.append(f"The images themselves changed: {said}. Check the camera, lighting, focus, or what produces "
                   "the files.")
    if sig & {"feature_mmd", "softmax_ks"}:
        how = [] if "feature_mmd" not in sig else ["the features it extracts differ from validation's"]
        if "softmax_ks" in sig:
            how.append(f"its confidence differs (mean {_fmt(w.get('mean_confidence'), 2)}, validation "
                       f"{_fmt(w.get('reference_mean_confidence'), 2)})")
        out.append(f"The model sees these images differently: {' and '.join(how)}.")
    est = w.get("expected_accuracy") or {}
    if est.get("expected_accuracy") is not None:
        line = (f"Label-free accuracy estimate {est['expected_accuracy']:.2f} (95 % interval {est['low']:.2f}-"
                f"{est['high']:.2f})")
        out.append(line + (": not reliable under this shift; label a random sample of the window to measure it."
                           if est.get("reliable") is False else "."))
    measured = w.get("measured_accuracy")
    if measured and measured.get("accuracy") is not None:
        out.append(f"Reviewers labelled {measured['n']} of its images: {measured['accuracy']:.2f} right (those come "
                   "from the review queue, not a random sample).")
        rs = measured.get("random_slice") or {}
        if rs.get("n"):
            out.append(f"On the random slice (unbiased): {rs['accuracy']:.2f} right of {rs['n']} labelled (95 % "
                       f"interval {rs['low']:.2f}-{rs['high']:.2f}; {rs['members']} of the window's predictions are in "
                       "the slice).")
        none = measured.get("not_a_class") or {}
        if none.get("n"):
            out.append(f"Reviewers said {none['n']} of them show none of the classes; the service had rejected "
                       f"{none['rejected']} of those as 'unknown' and given a class to the other "
                       f"{none['n'] - none['rejected']}.")
    return out


def verdict(report: dict[str, Any]) -> list[str]:
    """What the report found, in plain sentences for the person who acts on it: first line the verdict (alert
    raised, drift without an alert, no drift, or nothing tested yet), then which windows drifted and what differs in
    the last of them, and whether the newest tested window is back to normal. Only complete windows count, as the
    service counts them; a window still filling (the trailing partial block, the current hour or day) gets a line
    of its own. [] when there are no windows (the report's messages say why)."""
    windows = report.get("windows") or []
    if not windows:
        return []
    settled = [x for x in windows if not x.get("partial")]
    raised = _raised(report)
    if settled:
        lines = _settled_verdict(report, settled)
    elif raised:  # the service's alert stands whatever this report's windows show (an hour report of a block alert)
        lines = [f"ALERT raised by the service ({', '.join(raised)}); no window here is complete yet, so they do not "
                 "show why (widen --since, or use the service's window)."]
    else:
        lines = ["No conclusion yet: no window is complete; the service tests a window and counts it toward an alert "
                 "once it is."]
    return lines + [line for x in windows if x.get("partial") for line in _filling_words(report, x)]


def verdict_blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The verdict's lines as (sentence, its findings) for display: a line starting with "- " is a finding of the
    sentence before it (the CLI indents it, the page lists it)."""
    blocks: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("- ") and blocks:
            blocks[-1][1].append(line[2:])
        else:
            blocks.append((line, []))
    return blocks


def _settled_verdict(report: dict[str, Any], windows: list[dict[str, Any]]) -> list[str]:
    """The verdict over complete windows (see `verdict`)."""
    w = report["window"]
    alpha, k = w["alpha"], w["consecutive"]
    tested = [x for x in windows if x["tested"]]
    drifted = [x for x in tested if x["significant"]]
    raised = _raised(report)
    if not tested and raised:
        return [f"ALERT raised by the service ({', '.join(raised)}); none of the {len(windows)} windows here has the "
                f"{w['min_window']} predictions a drift test needs, so they do not show why (widen --since)."]
    if not tested:
        which = "the only window has fewer than" if len(windows) == 1 else f"none of the {len(windows)} windows has"
        return [f"No conclusion yet: {which} the {w['min_window']} predictions a drift test needs; nothing was "
                "tested and no alert can be raised from them."]
    untested = len(windows) - len(tested)
    skipped = f" ({untested} smaller window{'s' if untested > 1 else ''} not tested)" if untested else ""
    if raised:
        head = (f"ALERT raised by the service ({', '.join(raised)}): {len(drifted)} of {len(tested)} tested windows "
                f"differ from the reference (the validation images){skipped}.")
    elif not drifted:
        return [f"No drift: none of the {len(tested)} tested windows differs from the reference (the validation "
                f"images) at alpha = {alpha:g}{skipped}. No alert."]
    elif windows[-1].get("alert_active"):
        head = (f"Drift: {len(drifted)} of {len(tested)} tested windows differ from the reference, {k} in a row: "
                f"the alert's rule is met{skipped}.")
    elif fired := [x for x in windows if x.get("alert_event") == "fired"]:
        head = (f"Drift that has passed: {len(drifted)} of {len(tested)} tested windows differ from the reference; "
                f"{k} in a row met the alert's rule at window {_label(fired[-1])}, and {k} clean windows cleared it"
                f"{skipped}. No alert now.")
    else:
        head = (f"No alert: {len(drifted)} of {len(tested)} tested windows differ from the reference, never {k} in a "
                f"row{skipped}. Without drift about {alpha:.0%} of windows differ by chance.")
    last = drifted[-1] if drifted else None
    lines = [head]
    if len(drifted) > 1:  # only the last one's findings follow: name them all, so none reads as the only one
        named = [f"{_label(x)} (p = {_fmt(x['p_value'])})" for x in drifted[-MAX_NAMED_WINDOWS:]]
        earlier = len(drifted) - len(named)
        lines.append(f"The windows that differ: {', '.join(named)}" + (f", and {earlier} earlier" if earlier else "")
                     + ".")
    if last is not None:
        lines.append(f"In {'the latest, ' if len(drifted) > 1 else ''}window {_label(last)} ({last['n']} predictions, "
                     f"{last['start']} to {last['end']}; p = {_fmt(last['p_value'])}):")
        lines += [f"- {line}" for line in _window_words(last)]
        newest = tested[-1]
        if newest is not last:
            lines.append(f"The newest tested window, {_label(newest)}, is consistent with the reference.")
    return lines


def _raised(report: dict[str, Any]) -> list[str]:
    """The names of the service's alerts raised about this bundle."""
    return sorted(name for name, a in (report.get("alerts") or {}).items()
                  if a.get("active") and a.get("about_this_bundle", True))


def _filling_words(report: dict[str, Any], x: dict[str, Any]) -> list[str]:
    """A window still filling (marked partial by build_report): what it shows so far, and that it is not counted."""
    size = report["window"].get("size")
    if x.get("kind") == "block":
        what = f"is still filling ({x['n']} of {size} predictions)" if size else f"is still filling ({x['n']})"
    else:
        what = f"is still open (until {x['end']}; {x['n']} predictions so far)"
    head = f"The newest window, {_label(x)}, {what}"
    if not x["tested"]:
        return [f"{head}: too few predictions to test yet; it is tested and counted toward an alert once complete."]
    if not x["significant"]:
        return [f"{head}: consistent with the reference so far; it counts toward an alert once complete."]
    return [f"{head}: it already differs from the reference (p = {_fmt(x['p_value'])}), not yet counted toward an "
            "alert (the service counts it once complete):", *(f"- {line}" for line in _window_words(x))]


# --- example thumbnails ---------------------------------------------------------------------------------------
Fetch = Callable[[int], "bytes | None"]  # prediction id -> the kept image's bytes, None when not kept (or evicted)


def thumbnail(data: bytes, *, side: int = THUMB_SIDE, quality: int = 70) -> str | None:
    """Base64 JPEG of an image's bytes fitted into side x side (EXIF orientation applied), or None when the bytes
    do not decode as an image (a kept file is shown, never trusted)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                return None
            im.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a reduced scale
            small = ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(report: dict[str, Any], fetch: Fetch, *, per_statistic: int = THUMBS_PER_STATISTIC,
               max_windows: int = THUMB_WINDOWS) -> list[dict[str, Any]]:
    """For the last `max_windows` windows with a significant image-statistic shift, per shifted statistic, up to
    `per_statistic` kept images among the window's `examples` (most shifted first; see `monitor.windows`):
    [{label, stat, window_value, reference_value, images: [{id, jpeg (base64)}]}]."""
    shifted = [w for w in report.get("windows") or []
               if any(v.get("examples") for v in (w.get("image_stats") or {}).values())]
    out = []
    for w in shifted[-max_windows:]:
        for stat, shift in w["image_stats"].items():
            images = []
            for pid in shift.get("examples") or []:
                data = fetch(pid)
                jpeg = thumbnail(data) if data else None
                if jpeg is not None:
                    images.append({"id": pid, "jpeg": jpeg})
                if len(images) == per_statistic:
                    break
            if not images:
                continue
            if "window_median" in shift:
                window_value = f"median {_fmt(shift['window_median'])}"
                reference_value = f"median {_fmt(shift['reference_median'])}"
            else:
                window_value = f"mostly {shift.get('window_top')} ({_fmt(shift.get('window_share'))})"
                reference_value = f"{_fmt(shift.get('reference_share'))} of the profile"
            out.append({"label": _label(w), "stat": stat, "window_value": window_value,
                        "reference_value": reference_value, "images": images})
    return out


@contextmanager
def kept_images(database_url: str, images: ImageStore) -> Iterator[Fetch]:
    """A `Fetch` over the service's kept images: the prediction's kept_images row in the database at
    `database_url` (not evicted) and its bytes in the content-addressed store `images`."""
    from sightline.storage.store import Store

    store = Store(database_url)

    def fetch(prediction_id: int) -> bytes | None:
        row = store.kept_image(prediction_id)
        if row is None or row.get("evicted") is not None:
            return None
        return images.get(row["sha256"])

    try:
        yield fetch
    finally:
        store.close()


# --- which model the stored predictions come from ---------------------------------------------------------------
def stored_models(database_url: str, fingerprint: str) -> tuple[list[dict[str, Any]], int]:
    """The models the stored predictions name ([{"name", "version", "n"}], most predictions first; version as the
    service stores it: "2", or "2+v3.<hash>" from a registry) and how many were monitored against the profile
    `fingerprint`; over the whole database (not only --since): an alert may come from any of them."""
    from sqlalchemy import func, select

    from sightline.storage.store import PredictionRecord, PredictionSignal, Store

    p = PredictionRecord
    store = Store(database_url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(p.model_name, p.model_version, func.count())
                                .group_by(p.model_name, p.model_version)).all()
            n_profile = conn.execute(select(func.count()).select_from(PredictionSignal)
                                     .where(PredictionSignal.profile == fingerprint)).scalar_one()
    finally:
        store.close()
    models = [{"name": r[0], "version": r[1], "n": int(r[2])} for r in rows]
    models.sort(key=lambda m: (-m["n"], str(m["name"]), str(m["version"])))
    return models, int(n_profile)


def bundle_match(bundle: dict[str, Any], fingerprint: str, models: list[dict[str, Any]], n_profile: int
                 ) -> dict[str, Any]:
    """Whether any stored prediction is the bundle's (`bundle`: the report's {"name", "version"}): its name and
    version (a registry's "VERSION+vN.hash" included), or monitored with its profile (`n_profile` > 0); plain data:
    {"matched", "n_matching", "n_profile", "models"}, and "message" (one line, None when matched or empty)."""
    name, version = str(bundle["name"]), str(bundle["version"])
    n = sum(m["n"] for m in models
            if m["name"] == name and (m["version"] == version or str(m["version"]).startswith(f"{version}+")))
    matched = n > 0 or n_profile > 0
    message = None
    if not matched and models:
        held = ", ".join(f"{m['name']} {m['version']} ({m['n']} predictions)" for m in models[:MODELS_NAMED])
        more = f" and {len(models) - MODELS_NAMED} more" if len(models) > MODELS_NAMED else ""
        message = (f"no prediction in the database is from the bundle given ({name} {version}, profile "
                   f"{fingerprint}): it holds {held}{more}; pass the bundle the service served, or its database "
                   "(--database).")
    return {"matched": matched, "n_matching": n, "n_profile": n_profile, "models": models, "message": message}


def alert_about_bundle(alert: dict[str, Any], fingerprint: str, matched: bool) -> tuple[bool, str]:
    """Whether `alert` (a report's alert, with the "profile" its row records) is about the bundle whose profile
    is `fingerprint`, and how that was decided: "profile" (the fingerprints are equal, or not), or "predictions"
    for a row written before alerts recorded their model (profile None): then it is the bundle's when any stored
    prediction is (`matched`, `bundle_match`'s answer), as before."""
    if alert.get("profile") is None:
        return matched, "predictions"
    return alert["profile"] == fingerprint, "profile"


def add_bundle_match(report: dict[str, Any], database_url: str) -> dict[str, Any]:
    """Add "bundle_match" (`bundle_match`'s answer) to `build_report`'s report, its message first among the
    messages, and to each alert ("alerts" and "other_alerts") "about_this_bundle" and "attributed_by"
    (`alert_about_bundle`). Returns the report."""
    fingerprint = report["profile"]["fingerprint"]
    models, n_profile = stored_models(database_url, fingerprint)
    match = bundle_match(report["bundle"], fingerprint, models, n_profile)
    report["bundle_match"] = match
    if match["message"]:
        report["messages"].insert(0, match["message"])
    for alert in [*report["alerts"].values(), *report.get("other_alerts", [])]:
        alert["about_this_bundle"], alert["attributed_by"] = alert_about_bundle(alert, fingerprint, match["matched"])
    return report


def raised_by(alert: dict[str, Any]) -> str:
    """The model an alert row names, for a line or a table cell: "pets 1 (profile 0123...)", or "not recorded"
    for a row written before alerts recorded their model."""
    model = alert.get("model")
    if alert.get("profile") is None:
        return "not recorded"
    who = f"{model['name']} {model['version']} " if model else ""
    return f"{who}(profile {alert['profile']})"


# --- the page -------------------------------------------------------------------------------------------------
def render_html(report: dict[str, Any], images: dict[str, str] | None = None, *,
                fetch: Fetch | None = None) -> str:
    """The report as one HTML page from templates/monitor.html.j2 (plots from `plots(report)` unless given;
    example thumbnails of shifted image statistics when `fetch` reads kept images)."""
    figs = plots(report) if images is None else images
    thumbs = thumbnails(report, fetch) if fetch is not None else []
    if thumbs or fetch is None:
        note = None if thumbs else "No example thumbnails: this report was made without the service's image store."
    else:
        note = ("No example thumbnails: no window has a significant image-statistic shift, or the service kept none "
                "of the images that show it (it keeps review and unknown images and a sample of accepted ones).")
    said = report["verdict"] if "verdict" in report else verdict(report)
    return _environment().get_template("monitor.html.j2").render(r=report, figs=figs, titles=_PLOT_TITLES,
                                                                 thumbs=thumbs, thumbs_note=note, verdict=said,
                                                                 blocks=verdict_blocks(said))


def write_report(report: dict[str, Any], out: str | Path, *, fetch: Fetch | None = None) -> tuple[Path, Path]:
    """Write `out/monitor.json` and `out/monitor.html` (each atomically: a temporary file, then a rename); `fetch`
    reads the kept images for the example thumbnails. Returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "monitor.json", out / "monitor.html"
    texts = {json_path: json.dumps(report, indent=2, allow_nan=False) + "\n",
             html_path: render_html(report, fetch=fetch)}
    for path, text in texts.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return json_path, html_path
