"""`run_demo`: the whole path on generated data in one call, sized for a 2-core laptop (< 5 minutes):
synth (with planted data problems) -> audit + quarantine -> split -> train (Lite0, offline ImageNet weights, low
resolution) -> evaluate (report) -> explain -> export (ONNX + int8), then how to serve it."""
from __future__ import annotations

import time
from pathlib import Path

from sightline.errors import UserInputError

__all__ = ["run_demo"]


def _say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold cyan]demo[/] {message}", highlight=False)


def run_demo(out: str | Path, *, quick: bool = False, seed: int = 0, model: str = "tf_efficientnet_lite0",
             weights: str = "auto") -> dict[str, str]:
    """Run every stage into `out` (a new or empty folder); returns {artifact: path or command} to print.

    quick: fewer, smaller images and 2 epochs (for tests); the default is sized to finish under 5 minutes on
    2 CPU cores. model / weights: what to train (tests use a tiny timm model)."""
    from sightline.data.audit import audit_dataset
    from sightline.data.split import split_dataset
    from sightline.data.synth import synthesize
    from sightline.evaluate.run import evaluate
    from sightline.explain.run import explain_files
    from sightline.optimize.export import export
    from sightline.train.fit import train

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"demo folder '{out}' is not empty; choose a new --out folder or delete it.")
    n, size, input_size, epochs = (160, 64, 64, 2) if quick else (600, 128, 128, 8)
    artifacts: dict[str, str] = {}
    started = time.perf_counter()

    _say(f"1/7 synthesising {n} surface images ({size} px) with planted data problems ...")
    raw = out / "raw"
    synthesize(raw, n=n, size=size, seed=seed, layout="flat", plant_issues=True)
    artifacts["raw data"] = str(raw)
    artifacts["planted issues"] = str(raw / "planted_issues.json")

    _say("2/7 auditing the raw images; flagged files move to raw/.quarantine (nothing is deleted) ...")
    audit = audit_dataset(raw, out=out / "audit", move_to_quarantine=True)
    found = ", ".join(f"{k} {v}" for k, v in audit.counts.items() if v) or "nothing"
    _say(f"    found: {found}; quarantined {len(audit.quarantined)} files")
    artifacts["audit report"] = str(out / "audit" / "audit.html")

    _say("3/7 splitting 70/15/15 (stratified, near-duplicates kept in one split) ...")
    data = out / "data"
    split = split_dataset(raw, data, seed=seed)
    _say(f"    {split.n_images} images, {split.groups_merged} duplicate groups kept together")
    artifacts["split data"] = str(data)

    _say(f"4/7 training {model} at {input_size} px for up to {epochs} epochs ...")
    run = train(data, out / "run", model=model, weights=weights, input_size=input_size,
                epochs=epochs, batch_size=32, seed=seed, progress=not quick)
    artifacts["run"] = str(run)
    artifacts["bundle"] = str(run / "bundle")
    artifacts["tensorboard"] = f"tensorboard --logdir {run / 'logs'}"

    _say("5/7 evaluating on the test split (temperature and thresholds chosen on val) ...")
    metrics = evaluate(run, data, split="test", n_bootstrap=200, robustness=not quick, robustness_images=60,
                       max_region_images=100, progress=not quick)
    _say(f"    test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} "
         f"on {metrics['n_images']} images")
    artifacts["eval metrics"] = str(run / "eval" / "metrics.json")
    artifacts["report"] = str(run / "eval" / "report.html")
    artifacts["model card"] = str(run / "bundle" / "MODEL_CARD.md")

    _say("6/7 explaining a few test images with Grad-CAM ...")
    test_images = sorted((data / "test").glob("*/*.jpg"))
    explain_files(run, test_images[:: max(1, len(test_images) // 4)][:4], method="gradcam", out=run / "explain")
    artifacts["heatmaps"] = str(run / "explain")

    _say("7/7 exporting to ONNX (parity-checked) and int8 (calibrated on val) ...")
    exported = export(run, int8=True, data_dir=data)
    q = exported["int8"]
    _say(f"    ONNX max |logit diff| {exported['parity']['max_abs_diff']:.1e}; int8 "
         f"{q['size_bytes']['int8'] / 1e6:.1f} MB (fp32 {q['size_bytes']['fp32'] / 1e6:.1f} MB), test accuracy "
         f"{q['test']['fp32']['accuracy']:.3f} -> {q['test']['int8']['accuracy']:.3f}")
    artifacts["int8 onnx"] = str(run / "bundle" / "model.int8.onnx")
    artifacts["onnx"] = str(run / "bundle" / "model.onnx")

    artifacts["serve"] = f"sightline keys create demo --bundle {run} && sightline serve {run} --int8"
    _say(f"done in {time.perf_counter() - started:.0f} s")
    return artifacts
