"""Knowledge distillation: a trained teacher bundle -> a smaller or faster student (issue 5, part 2).

Loss (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes. The
teacher's logits are first calibrated (divided by its temperature fitted on val): a label-smoothed teacher is
under-confident, and its raw soft targets would be nearly uniform.

The student trains with the training stage's data module, system and Trainer (same augmentations, optimiser,
schedule, precision and early stopping). Training crops are augmented at the larger of the two input sizes, and
each model sees that crop at its own size and normalisation (the student's a downscale), so a Lite2 teacher at
260 px teaches a Lite0 student at 160 px without looking at upscaled images.

Example:
    >>> report = distill("runs/lite2", "DATA", "runs/lite0-kd", student="lite0", input_size=160)
    >>> report["teacher"]["accuracy"], report["student"]["accuracy"], report["student"]["ms_per_image_batch1"]
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sightline.bundle import Bundle, Preprocessing, load_bundle
from sightline.errors import DatasetError, UserInputError
from sightline.train.system import ClassifierSystem

__all__ = ["distill", "DistillSystem", "kd_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float = 2.0, alpha: float = 0.7, label_smoothing: float = 0.0,
            teacher_calibration: float = 1.0) -> torch.Tensor:
    """Distillation loss of (N, K) logits and (N,) labels; see the module docstring. `teacher_calibration` is
    the teacher's fitted temperature: its logits are calibrated (divided by it) before the softening."""
    t = temperature
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits.float() / t, dim=1),
        nn.functional.log_softmax(teacher_logits.float() / (teacher_calibration * t), dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    hard = nn.functional.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard


class _View(nn.Module):
    """A normalised (N, 3, H, W) batch -> the same images as `target` expects them: resized (antialiased) to
    `target.input_size` and re-normalised from `source`'s mean/std to `target`'s. Identity when nothing differs."""

    def __init__(self, source: Preprocessing, target: Preprocessing) -> None:
        super().__init__()
        self.size = target.input_size
        self.renormalise = (tuple(source.mean), tuple(source.std)) != (tuple(target.mean), tuple(target.std))
        self.register_buffer("s_mean", torch.tensor(source.mean).view(1, 3, 1, 1))
        self.register_buffer("s_std", torch.tensor(source.std).view(1, 3, 1, 1))
        self.register_buffer("t_mean", torch.tensor(target.mean).view(1, 3, 1, 1))
        self.register_buffer("t_std", torch.tensor(target.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        if self.renormalise:
            x = (x * self.s_std + self.s_mean - self.t_mean) / self.t_std
        return x


class DistillSystem(ClassifierSystem):
    """ClassifierSystem whose training loss is `kd_loss` against a frozen teacher; validation is unchanged."""

    def __init__(self, model: nn.Module, num_classes: int, *, temperature: float = 2.0, alpha: float = 0.7,
                 **kwargs: Any) -> None:
        super().__init__(model, num_classes, **kwargs)
        self.kd_temperature = temperature
        self.kd_alpha = alpha
        self.teacher_calibration = 1.0
        self._teacher: list[nn.Module] = []

    def set_teacher(self, teacher: nn.Module, teacher_view: _View, student_view: _View, *,
                    calibration: float = 1.0) -> DistillSystem:
        """Attach the frozen teacher. Training batches arrive at the larger of the two input sizes: the teacher
        sees them through `teacher_view`, the student through `student_view` (a downscale), so neither looks at
        an upscaled image. `calibration`: the teacher's temperature fitted on val.

        Set here rather than in __init__ so that neither Lightning's hyperparameters nor the checkpoint pickle a
        whole network; a plain list keeps it out of the optimiser and train()."""
        self._teacher = [teacher.eval().requires_grad_(False), teacher_view, student_view]
        self.teacher_calibration = calibration
        return self

    def on_fit_start(self) -> None:
        self._teacher = [m.to(self.device) for m in self._teacher]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        teacher, teacher_view, student_view = self._teacher
        with torch.no_grad():
            t_logits = teacher(teacher_view(x))
        loss = kd_loss(self(student_view(x)), t_logits, y, temperature=self.kd_temperature, alpha=self.kd_alpha,
                       label_smoothing=self.hparams.label_smoothing, teacher_calibration=self.teacher_calibration)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss


def _teacher_calibration(teacher: nn.Module, bundle: Bundle, dataset: Any) -> float:
    """The teacher's temperature fitted on val (NLL), so its soft targets say how sure it really is: a
    label-smoothed teacher is under-confident (logit gaps of about 0.4 on hymenoptera, fitted T about 0.25) and
    its raw soft targets would be close to uniform, teaching the student next to nothing."""
    from sightline.data.splits import load_split
    from sightline.evaluate.calibration import fit_temperature
    from sightline.inference import Engine, TorchBackend

    val = load_split(dataset, "val", classes=bundle.classes, preprocessing=bundle.preprocessing)
    device = next(teacher.parameters()).device
    engine = Engine(TorchBackend(teacher, device=device), bundle=bundle)
    logits = engine.run_crops(val.crops, batch_size=32).logits
    return round(fit_temperature(logits, val.y), 4)


def _accuracy_and_latency(bundle: Bundle, data_dir: Path, split: str, *, time_budget_s: float = 1.0) -> dict[str, Any]:
    """Eager PyTorch fp32 on CPU through the inference core: top-1 accuracy on `split`, and ms per image at batch 1
    and 32 (sightline.inference.time_calls)."""
    from sightline.data.splits import load_split
    from sightline.inference import open_engine, time_calls

    data = load_split(data_dir, split, classes=bundle.classes, preprocessing=bundle.preprocessing)
    with open_engine(bundle, backend="torch", device="cpu") as engine:
        logits = engine.run_crops(data.crops, batch_size=32).logits
        timings = {}
        for b in (1, 32):
            batch = engine.to_batch(np.repeat(data.crops[:1], b, axis=0))
            t = time_calls(lambda: engine.run(batch), items=b, budget_s=time_budget_s)
            timings[f"ms_per_image_batch{b}"] = round(t.ms_per_item, 3)
        n_params = sum(p.numel() for p in engine.backend.model.parameters())
    return {"architecture": bundle.architecture, "input_size": bundle.preprocessing.input_size, "split": split,
            "n_images": int(len(data.y)), "accuracy": float((logits.argmax(1) == data.y).mean()),
            "params": int(n_params), **timings}


def distill(
    teacher_run: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    student: str = "tf_efficientnet_lite0",
    input_size: int | None = None,
    temperature: float = 2.0,
    alpha: float = 0.7,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train `student` on `data_dir` (split layout) with soft targets from the teacher bundle.

    Writes `out_dir/bundle/` (the student, with `extra["distill"]`) and returns {"teacher": {...}, "student":
    {...}, "run": out_dir} with accuracy on the test split (val when there is none), parameter count and eager
    CPU latency of both. `overrides` are TrainConfig fields (epochs, batch_size, lr, weights, max_time_s, ...)."""
    import lightning as L

    from sightline.bundle import code_version
    from sightline.data.datasets import dataset_version
    from sightline.train.config import TrainConfig
    from sightline.train.blocks import (build_system, build_trainer, fit_system, load_best, quiet_lightning,
                                        resolve_config)
    from sightline.train.prepare import prepare

    # an infinite temperature makes the soft-target loss NaN: a student trained on it, without a word
    if not 0.0 <= alpha <= 1.0 or not 0 < temperature < float("inf"):
        raise UserInputError(f"--alpha {alpha} must be in [0, 1] and --temperature {temperature} a finite positive "
                             "number (default 2).")
    teacher_bundle = load_bundle(teacher_run)
    # the student's bundle goes to out_dir/bundle: the teacher's own run would lose its bundle to it
    teacher_dir, out = Path(teacher_bundle.path).resolve(), Path(out_dir).resolve()
    if (out / "bundle") == teacher_dir or out.is_relative_to(teacher_dir):
        raise UserInputError(f"--out '{out_dir}' would write the student into the teacher's bundle "
                             f"'{teacher_bundle.path}'; choose another folder, e.g. {teacher_dir.parent}-distilled.")
    cfg = resolve_config(TrainConfig(), {"model": student, "input_size": input_size, **overrides})
    prepared = prepare(data_dir, cfg)
    dataset, pre, dm, balance = prepared.dataset, prepared.pre, prepared.dm, prepared.balance
    if list(dataset.classes) != list(teacher_bundle.classes):
        raise DatasetError(f"dataset classes {dataset.classes} differ from the teacher's {teacher_bundle.classes}; "
                           "distil on the data the teacher was trained for.")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # The same system and Trainer as `train` (precision, channels-last, freeze epochs, early stopping, devices):
    # only the training loss differs.
    system = build_system(cfg, dataset.classes, dm, system_cls=DistillSystem, temperature=temperature, alpha=alpha)
    teacher = teacher_bundle.load_model("cpu")
    calibration = _teacher_calibration(teacher, teacher_bundle, dataset)
    # Training images are augmented at the larger input size; each model gets its own view of the same crop.
    big = replace(pre, input_size=max(pre.input_size, teacher_bundle.preprocessing.input_size))
    dm.augment_at(big)
    system.set_teacher(teacher, _View(big, teacher_bundle.preprocessing), _View(big, pre), calibration=calibration)
    run = Path(out_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg.save_yaml(run / "config.yaml")
    try:
        with quiet_lightning(cfg):  # as train: Lightning's INFO lines off in one process
            parts = build_trainer(cfg, run, dm, progress=progress)
            fit_s = fit_system(parts.trainer, system, dm, dataset)
    finally:
        dm.close()  # the decoded-image cache
    if not parts.trainer.is_global_zero:
        return {"run": str(run)}  # under DDP, rank 0 writes the bundle and measures
    load_best(system, parts.checkpoint.best_model_path)
    bundle = Bundle(
        architecture=cfg.model,
        classes=list(dataset.classes),
        preprocessing=pre,
        name=f"{teacher_bundle.name}-distilled",
        dataset_version=dataset_version(dataset),
        code_version=code_version(),
        extra={"train": {"data_dir": str(dataset.root), "config": cfg.to_dict(), "balance": balance,
                         "fit_seconds": round(fit_s, 1)},
               "distill": {"teacher": str(teacher_bundle.path), "teacher_architecture": teacher_bundle.architecture,
                           "temperature": temperature, "alpha": alpha, "teacher_calibration": calibration}},
    )
    bundle.save(run / "bundle", state_dict=system.model.state_dict())
    split = "test" if dataset.split("test") else "val"
    report = {
        "run": str(run),
        "teacher": _accuracy_and_latency(teacher_bundle, Path(data_dir), split),
        "student": _accuracy_and_latency(bundle, Path(data_dir), split),
        "fit_seconds": round(fit_s, 1),
    }
    bundle.metrics[split] = {"split": split, "n_images": report["student"]["n_images"],
                             "accuracy": report["student"]["accuracy"]}
    bundle.extra["distill"]["comparison"] = report
    bundle.write_json()
    return report
