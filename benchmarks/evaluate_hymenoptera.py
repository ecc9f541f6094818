"""Real photographs: `evaluate` on hymenoptera (ants vs bees; 243 train / 76 val / 77 test).

With `--run RUN` it evaluates that trained run (e.g. from benchmarks/train_hymenoptera.py); without, it builds a
quick model: Lite0's offline ImageNet backbone, frozen, with a linear head fitted on the train photos (a probe).
Prints the headline figures and where the report is.

    python benchmarks/evaluate_hymenoptera.py --out /tmp/hym                  # probe at 224 px, full suite
    python benchmarks/evaluate_hymenoptera.py --run RUN --out /tmp/hym        # a trained run
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def probe(data: Path, out: Path, size: int) -> Path:
    from sightline.bundle import Bundle
    from sightline.inference import Engine, TorchBackend, score_files
    from sightline.models.factory import create_model, default_preprocessing
    from sightline.progress import rich_progress

    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    pre = default_preprocessing("tf_efficientnet_lite0", input_size=size)
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", len(classes), weights="auto").eval()
    files = sorted(p for c in classes for p in (data / "train" / c).iterdir() if p.is_file())
    head = model.get_classifier()
    bundle = Bundle("tf_efficientnet_lite0", classes, preprocessing=pre)
    # pooled penultimate features through the inference core: the decode/preprocess path evaluation takes
    with Engine(TorchBackend(model, device="cpu"), bundle=bundle) as engine, rich_progress() as progress:
        (pooled,), inputs = score_files([engine], files, progress=progress, task="train features")
    y = torch.tensor([classes.index(Path(p).parent.name) for p in inputs.paths])
    x = torch.from_numpy(pooled.features)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    run = out / "run"
    bundle.save(run / "bundle", model.state_dict())
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--run", type=Path, default=None, help="a trained RUN; default: fit a linear probe")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--robustness-images", type=int, default=100)
    args = ap.parse_args()
    from sightline.evaluate.run import evaluate
    from sightline.progress import rich_progress

    t0 = time.perf_counter()
    run = args.run or probe(args.data, args.out, args.size)
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    with rich_progress() as progress:
        m = evaluate(run, args.data, out=args.out / "eval", robustness_images=args.robustness_images,
                     progress=progress)
    wall = time.perf_counter() - t0
    print(json.dumps({
        "n_images": m["n_images"],
        "accuracy": round(m["accuracy"], 3),
        "accuracy_ci": [round(m["ci"]["accuracy"]["low"], 3), round(m["ci"]["accuracy"]["high"], 3)],
        "macro_f1": round(m["macro_f1"], 3),
        "macro_roc_auc": m["macro_roc_auc"] and round(m["macro_roc_auc"], 3),
        "ece_before_after": [round(m["ece_uncalibrated"], 3), round(m["ece"], 3)],
        "temperature": round(m["temperature"], 3),
        "review": {k: m["review"][k] for k in ("review_confidence", "coverage", "accuracy_accepted")},
        "failure_modes": m["robustness"]["failure_modes"] if "robustness" in m else None,
        "model_s": round(t_model, 1),
        "evaluate_s": round(wall, 1),
        "stages_s": m["timings"],
        "report": m["files"].get("report"),
    }, indent=2))


if __name__ == "__main__":
    main()
