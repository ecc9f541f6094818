"""The evaluation report: ONE self-contained report.html (plots are base64 PNGs; it opens from disk, no server)
with a stakeholder summary on top (targets pass/fail, struggling classes, review workload, failure modes,
shortcut flags) and the details below; and MODEL_CARD.md in the bundle.

Input is the metrics.json dict from sightline.evaluate.run.evaluate (plus the gallery entries).
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from sightline.bundle import Bundle

__all__ = ["plots", "write_report", "write_model_card"]


def _fig_png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(m: dict[str, Any]) -> dict[str, str]:
    """name -> base64 PNG for every plot the metrics allow (confusion, pr, reliability, coverage, robustness,
    regions). Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    out: dict[str, str] = {}
    labels = m["confusion_matrix"]["labels"]
    k = len(labels)
    cm = np.asarray(m["confusion_matrix"]["matrix"])
    norm = np.asarray(m["confusion_matrix"]["normalized"])
    side = min(12, 2.5 + 0.55 * k)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({m['split']}, {m['n_images']} images; colour = share of the true class)")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    out["confusion"] = _fig_png(fig)

    if m.get("pr_curves"):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, curve in m["pr_curves"].items():
            ap = m["per_class"][name]["average_precision"]
            ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP {ap:.2f})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.02)
        ax.set_title("Precision-recall, one class vs the rest")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3)
        out["pr"] = _fig_png(fig)

    rel = m.get("reliability")
    if rel:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
        for key, label, color in (("before", f"before (ECE {m['ece_uncalibrated']:.3f})", "tab:orange"),
                                  ("after", f"after T={m['temperature']:.2f} (ECE {m['ece']:.3f})", "tab:blue")):
            pts = [(c, a) for c, a in zip(rel[key]["confidence"], rel[key]["accuracy"]) if c is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color, label=label)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title("Reliability diagram")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        out["reliability"] = _fig_png(fig)

    review = m.get("review")
    if review and review.get("curve"):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for curve, label, ls in ((review["curve"], m["split"], "-"), (review.get("val_curve"), "val", ":")):
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
        out["coverage"] = _fig_png(fig)

    rob = m.get("robustness")
    if rob and rob.get("results"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rows in rob["results"].items():
            ax.plot([0] + [r["severity"] for r in rows], [rob["clean_accuracy"]] + [r["accuracy"] for r in rows],
                    marker="o", label=name.replace("_", " "))
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Robustness ({rob['n_images']} images)")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        out["robustness"] = _fig_png(fig)

    pg = m.get("pointing_game")
    if pg and pg.get("per_class"):
        names = list(pg["per_class"])
        fig, ax = plt.subplots(figsize=(max(5, 1 + 0.8 * len(names)), 4))
        x = np.arange(len(names))
        rates = [pg["per_class"][c]["pointing_game"] for c in names]
        colors = ["tab:red" if pg["per_class"][c]["shortcut"] else "tab:blue" for c in names]
        ax.bar(x, rates, 0.6, color=colors)
        for xi, c, r in zip(x, names, rates):
            ax.text(xi, min(r + 0.03, 0.93), f"heat x{pg['per_class'][c]['energy_lift']:.1f}", ha="center", fontsize=8)
        ax.set_ylabel("share of heatmap peaks on the region")
        ax.axhline(0.5, color="red", ls="--", lw=1)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title("Does the model look at the region? (red: likely shortcut)")
        out["regions"] = _fig_png(fig)
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:32px 0 12px;border-bottom:2px solid #dde1e8;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 8px}
.sub{color:#5b6475;margin-bottom:18px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border-radius:10px;padding:14px 18px;box-shadow:0 1px 3px rgba(0,0,0,.08);min-width:150px}
.card .v{font-size:26px;font-weight:600} .card .l{color:#5b6475;font-size:13px}
table{border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 3px rgba(0,0,0,.08)}
td,th{padding:6px 12px;border-bottom:1px solid #eceef2;text-align:left;font-size:14px} th{background:#f0f2f6}
.pass{color:#fff;background:#1f9d55;border-radius:4px;padding:2px 8px;font-weight:600}
.fail{color:#fff;background:#d64545;border-radius:4px;padding:2px 8px;font-weight:600}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:10px 14px;margin:10px 0;border-radius:4px}
.ok{background:#e8f6ee;border-left:4px solid #1f9d55;padding:10px 14px;margin:10px 0;border-radius:4px}
img.plot{max-width:100%;background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{background:#fff;margin:0;padding:8px;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);font-size:12px}
figure img{width:120px;height:120px;image-rendering:pixelated} figcaption{max-width:244px;margin-top:4px}
.wrong{border-top:4px solid #d64545}.correct{border-top:4px solid #1f9d55}.low-confidence{border-top:4px solid #f0a020}
.muted{color:#5b6475;font-size:13px}
"""


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f} %"


def _f3(v: Any) -> str:
    return "" if v is None else f"{float(v):.3f}"


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _source(m: dict[str, Any]) -> str:
    """Where thresholds and temperature came from: the val split, or (no val split) the bundle's earlier ones."""
    return "chosen on val" if (m.get("review") or {}).get("chosen_on", "val") == "val" else "kept from the bundle"


def _summary(m: dict[str, Any]) -> list[str]:
    h: list[str] = []
    ci = m.get("ci", {})
    cards = []
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1")):
        c = ci.get(key)
        rng = f"95 % CI {_pct(c['low'])} – {_pct(c['high'])}" if c else ""
        seeds = m.get("seeds")
        if seeds and key in seeds["mean"]:
            rng = f"{seeds['n_seeds']} seeds: {_pct(seeds['mean'][key])} ± {_pct(seeds['std'][key])}"
        cards.append(f'<div class="card"><div class="v">{_pct(m[key])}</div><div class="l">{label}<br>{rng}</div></div>')
    review = m.get("review") or {}
    if review.get("review_confidence") is not None:
        cards.append(
            f'<div class="card"><div class="v">{_pct(1 - review["coverage"])}</div><div class="l">sent to human review'
            f'<br>accuracy of the rest {_pct(review.get("accuracy_accepted"))}</div></div>'
        )
    cards.append(f'<div class="card"><div class="v">{m["ece"]:.3f}</div><div class="l">calibration error (ECE)<br>'
                 f'before scaling {m["ece_uncalibrated"]:.3f}</div></div>')
    h.append(f'<div class="cards">{"".join(cards)}</div>')

    targets = m.get("targets") or []
    if targets:
        passed = sum(t["passed"] for t in targets)
        h.append(f"<h3>Targets: {passed} of {len(targets)} met on {_esc(m['split'])}</h3>")
        rows = "".join(
            f"<tr><td>{_esc(t['target'])}</td><td>{t['value']:.3f}</td>"
            f"<td>{_f3(t['val_value'])}</td>"
            f"<td><span class=\"{'pass' if t['passed'] else 'fail'}\">{'PASS' if t['passed'] else 'FAIL'}</span></td></tr>"
            for t in targets
        )
        h.append(f"<table><tr><th>target</th><th>{_esc(m['split'])}</th><th>val</th><th></th></tr>{rows}</table>")
    else:
        h.append('<p class="muted">No targets: add them to sightline.yaml (<code>sightline init DATA</code>).</p>')
    th = m.get("thresholds") or {}
    unreachable = [c for c, d in (th.get("details") or {}).items() if not d.get("reachable", True)]
    if unreachable:
        h.append(f'<div class="warn">No threshold meets the targets for {", ".join(map(_esc, unreachable))} even on '
                 "the validation split; the closest one is used. More (or cleaner) data for these classes is needed."
                 "</div>")
    rv = th.get("review") or {}
    if rv and not rv.get("reachable", True):
        h.append(f'<div class="warn">Even the most confident validation predictions do not reach '
                 f'{_pct(rv.get("target_accuracy"))} accuracy; the review threshold keeps the best that was '
                 "possible.</div>")

    struggling = m.get("struggling_classes") or []
    if struggling:
        items = "".join(
            f"<li><b>{_esc(s['class'])}</b>: recall {_pct(s['recall'])}, precision {_pct(s['precision'])}"
            + (f"; most often mistaken for <b>{_esc(s['confused_with'])}</b> ({s['n_confused']} images)"
               if s["confused_with"] else "") + "</li>"
            for s in struggling
        )
        h.append(f'<div class="warn"><b>Classes the model struggles with</b><ul>{items}</ul></div>')
    else:
        h.append('<div class="ok">No class falls clearly behind (every recall and precision is at least 80 %).</div>')
    pg = m.get("pointing_game")
    if pg and pg.get("shortcut_classes"):
        h.append(
            f'<div class="warn"><b>Likely shortcut</b>: for {", ".join(map(_esc, pg["shortcut_classes"]))} the '
            "model mostly looks outside the marked region; check the gallery before trusting it.</div>"
        )
    rob = m.get("robustness")
    if rob:
        items = "".join(f"<li>{_esc(s)}</li>" for s in rob.get("failure_modes", []))
        h.append(f"<h3>Failure modes under corruption</h3><ul>{items}</ul>")
    if m.get("warning"):
        h.append(f'<div class="warn">{_esc(m["warning"])}</div>')
    if m.get("unreadable"):
        h.append(f'<div class="warn">{len(m["unreadable"])} image(s) could not be read and were left out.</div>')
    return h


def write_report(m: dict[str, Any], path: str | Path, *, gallery: list[dict[str, Any]]) -> Path:
    """Write the self-contained HTML report; returns its path."""
    path = Path(path)
    figs = plots(m)
    model = m.get("model", {})
    spec = m.get("spec") or {}
    h: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Sightline report: {_esc(model.get('name', 'model'))}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(model.get('name', 'model'))} v{_esc(model.get('version', ''))}</h1>",
        f"<div class='sub'>{_esc(spec.get('task') or 'No task description (add one to sightline.yaml).')}<br>"
        f"{_esc(model.get('architecture', ''))} · evaluated on the <b>{_esc(m['split'])}</b> split, "
        f"{m['n_images']} images · thresholds and temperature {_source(m)}</div>",
        "<h2>Summary</h2>",
        *_summary(m),
    ]
    seeds = m.get("seeds")
    if seeds:
        keys = list(seeds["mean"])
        head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
        rows = "".join(
            "<tr><td>seed " + _esc(s["seed"]) + "</td>"
            + "".join(f"<td>{s[k]:.4f}</td>" if s.get(k) is not None else "<td></td>" for k in keys) + "</tr>"
            for s in seeds["per_seed"]
        )
        rows += "<tr><th>mean ± std</th>" + "".join(
            f"<th>{seeds['mean'][k]:.4f} ± {seeds['std'][k]:.4f}</th>" for k in keys) + "</tr>"
        h.append(f"<h2>Variance across {seeds['n_seeds']} seeds</h2><table><tr><th></th>{head}</tr>{rows}</table>")

    h.append("<h2>Per class</h2>")
    rows = "".join(
        f"<tr><td>{_esc(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td>"
        f"<td>{v['support']}</td><td>{_f3(v['average_precision'])}</td><td>{_f3(v['roc_auc'])}</td></tr>"
        for c, v in m["per_class"].items()
    )
    h.append("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>AP</th>"
             f"<th>ROC-AUC</th></tr>{rows}"
             f"<tr><th>macro</th><th>{m['macro_precision']:.3f}</th><th>{m['macro_recall']:.3f}</th>"
             f"<th>{m['macro_f1']:.3f}</th><th>{m['n_images']}</th><th></th><th></th></tr>"
             f"<tr><th>weighted</th><th>{m['weighted_precision']:.3f}</th><th>{m['weighted_recall']:.3f}</th>"
             f"<th>{m['weighted_f1']:.3f}</th><th></th><th></th><th></th></tr></table>")
    topk = ", ".join(f"{k.replace('_', '-')} {_pct(v)}" for k, v in (m.get("top_k") or {}).items())
    if topk:
        h.append(f"<p class='muted'>Top-k accuracy: {topk}. Arg-max accuracy (no thresholds): "
                 f"{_pct(m.get('argmax_accuracy'))}.</p>")
    h.append(_img(figs["confusion"], "confusion matrix"))
    if "pr" in figs:
        h.append("<h2>Precision-recall</h2>" + _img(figs["pr"], "precision-recall curves"))
    h.append("<h2>Calibration and human review</h2><div class='grid'>")
    h.append(_img(figs["reliability"], "reliability diagram"))
    if "coverage" in figs:
        h.append(_img(figs["coverage"], "coverage vs accuracy"))
    h.append("</div>")
    th = m.get("thresholds") or {}
    if th.get("class_thresholds"):
        items = "".join(
            f"<li><b>{_esc(c)}</b> predicted when its probability ≥ {t:.3f} "
            f"({_esc((th.get('details') or {}).get(c, {}).get('rule', ''))})</li>"
            for c, t in th["class_thresholds"].items()
        )
        h.append(f"<h3>Per-class thresholds ({_source(m)})</h3><ul>{items}</ul>")
    if "robustness" in figs:
        h.append("<h2>Robustness</h2>" + _img(figs["robustness"], "robustness"))
        rob = m["robustness"]
        head = "".join(f"<th>severity {s}</th>" for s in rob["severities"])
        rows = "".join(
            f"<tr><td>{_esc(n.replace('_', ' '))}</td>"
            + "".join(f"<td>{_pct(r['accuracy'])} <span class='muted'>flip {_pct(r['flip_rate'])}</span></td>"
                      for r in rows_) + "</tr>"
            for n, rows_ in rob["results"].items()
        )
        h.append(f"<table><tr><th>corruption (clean {_pct(rob['clean_accuracy'])})</th>{head}</tr>{rows}</table>")
    pg = m.get("pointing_game")
    if pg:
        h.append(f"<h2>Regions: does the model look where it should?</h2><p>{_esc(pg.get('method', ''))} heatmaps "
                 f"of the true class on {pg['n_images']} images with a marked region: the peak is inside the region "
                 f"for {_pct(pg['overall'])} of them; {_pct(pg['energy_inside'])} of the heat lies inside. "
                 f"<span class='muted'>{_esc(pg['rule'])}.</span></p>")
        rows = "".join(
            f"<tr><td>{_esc(c)}</td><td>{v['n_images']}</td><td>{_pct(v['pointing_game'])}</td>"
            f"<td>{_pct(v['energy_inside'])}</td><td>{_pct(v['region_area'])}</td><td>{v['energy_lift']:.1f}x</td>"
            f"<td>{'<span class=fail>likely shortcut</span>' if v['shortcut'] else ''}</td></tr>"
            for c, v in pg["per_class"].items()
        )
        h.append("<table><tr><th>class</th><th>images</th><th>peak on region</th><th>heat on region</th>"
                 f"<th>region area</th><th>lift</th><th></th></tr>{rows}</table>")
        if "regions" in figs:
            h.append(_img(figs["regions"], "regions"))
    if gallery:
        h.append(f"<h2>Gallery ({_esc(m.get('explain_method', ''))})</h2><p class='muted'>Per true class: the most "
                 "confident correct predictions, the most confident mistakes, the least confident predictions. "
                 "Left: the input as the model sees it; right: where the evidence for the predicted class lies.</p>")
        for c in m["per_class"]:
            entries = [e for e in gallery if e["class"] == c]
            if not entries:
                continue
            h.append(f"<h3>{_esc(c)}</h3><div class='grid'>")
            for e in entries:
                h.append(
                    f"<figure class='{e['group']}'><img alt='image' src='data:image/png;base64,{e['image']}'>"
                    f"<img alt='heatmap' src='data:image/png;base64,{e['heatmap']}'><figcaption><b>{_esc(e['group'])}"
                    f"</b>: true {_esc(e['true'])}, predicted {_esc(e['predicted'])} ({_pct(e['confidence'])})<br>"
                    f"<span class='muted'>{_esc(e['path'])}</span></figcaption></figure>"
                )
            h.append("</div>")
    timings = m.get("timings") or {}
    h.append(f"<p class='muted'>Generated by sightline evaluate · {_esc(m.get('data', {}).get('root', ''))} · "
             f"{', '.join(f'{k} {v}' for k, v in timings.items())}</p></main></body></html>")
    path.write_text("\n".join(h))
    return path


def write_model_card(m: dict[str, Any], bundle: Bundle) -> Path:
    """MODEL_CARD.md in the bundle folder: intended use, data, headline metrics with CIs, targets, thresholds,
    calibration, failure modes in plain words, explainability findings, limits."""
    assert bundle.path is not None
    ci = m.get("ci", {})
    spec = m.get("spec") or {}
    lines = [
        f"# Model card: {bundle.name} v{bundle.version}",
        "",
        f"- **Task**: {spec.get('task') or 'not stated (add `task:` to sightline.yaml)'}",
        f"- **Architecture**: `{bundle.architecture}`, input {bundle.preprocessing.input_size} px, "
        f"classes: {', '.join(bundle.classes)}",
        f"- **Training data version**: `{bundle.dataset_version}`; code `{bundle.code_version}`; created {bundle.created}",
        "",
        f"## Performance on the {m['split']} split ({m['n_images']} images)",
        "",
        "| metric | value | 95 % bootstrap CI |",
        "|---|---|---|",
    ]
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        c = ci.get(key)
        lines.append(f"| {key} | {m[key]:.3f} | {c['low']:.3f} – {c['high']:.3f} |" if c else f"| {key} | {m[key]:.3f} | |")
    seeds = m.get("seeds")
    if seeds:
        lines += ["", f"Across {seeds['n_seeds']} seeds: " + "; ".join(
            f"{k} {seeds['mean'][k]:.3f} ± {seeds['std'][k]:.3f}" for k in seeds["mean"])]
    lines += ["", "Per class:", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
    if m.get("targets"):
        lines += ["", f"## Targets (thresholds {_source(m)}, verdict on {m['split']})", ""]
        for t in m["targets"]:
            lines.append(f"- {'PASS' if t['passed'] else 'FAIL'}: {t['target']} (got {t['value']:.3f})")
    review = m.get("review") or {}
    lines += ["", "## Decisions", "",
              f"- Temperature {m['temperature']:.3f} ({_source(m).replace('chosen', 'fitted')}); ECE {m['ece_uncalibrated']:.3f} before, "
              f"{m['ece']:.3f} after."]
    if review.get("review_confidence") is not None:
        lines.append(
            f"- Predictions with confidence below {review['review_confidence']:.2f} go to human review: "
            f"{1 - review['coverage']:.0%} of {m['split']} images; accuracy on the rest {_pct(review['accuracy_accepted'])}."
        )
    for c, t in ((m.get("thresholds") or {}).get("class_thresholds") or {}).items():
        lines.append(f"- `{c}` is predicted whenever its probability is at least {t:.3f}.")
    rob = m.get("robustness")
    if rob:
        lines += ["", f"## Failure modes (corruption suite on {rob['n_images']} {m['split']} images)", ""] + [
            f"- {s}" for s in rob.get("failure_modes", [])]
    struggling = m.get("struggling_classes") or []
    if struggling:
        lines += ["", "## Weak classes", ""] + [
            f"- {s['class']}: recall {s['recall']:.0%}, precision {s['precision']:.0%}"
            + (f", most often confused with {s['confused_with']}" if s["confused_with"] else "") for s in struggling]
    pg = m.get("pointing_game")
    if pg:
        lines += ["", "## Where the model looks", "",
                  f"- Pointing game ({pg.get('method')}): {_pct(pg['overall'])} of heatmap peaks inside the marked region."]
        if pg.get("shortcut_classes"):
            lines.append(f"- **Likely shortcut** for {', '.join(pg['shortcut_classes'])}: the model mostly looks "
                         "outside the region. Do not deploy before checking these images.")
    lines += ["", "## Limits", "",
              f"- Figures come from {m['n_images']} {m['split']} images; the confidence intervals say how sure they are.",
              "- Images unlike the training data (other cameras, lighting, objects) are out of scope; "
              "watch the review queue."]
    path = bundle.path / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path
