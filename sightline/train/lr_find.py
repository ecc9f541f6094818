"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks"; as fastai's
`lr_find`): train for up to `steps` batches while the learning rate grows exponentially from `min_lr` to
`max_lr`, record the smoothed training loss, stop when it diverges, and suggest the rate in the middle of the
longest stretch where the loss falls (fastai's "valley" rule). The model's weights are restored afterwards.

Why not Lightning's `Tuner.lr_find`: it sets every parameter group to the same rate, and Sightline's system
trains the pretrained backbone at `backbone_lr_scale` x the head's rate; here every group's rate is multiplied
by the same factor, so the suggestion is the head's peak rate of `TrainConfig.lr` with the backbone at its scale.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["LrFinding", "lr_range_test", "find_lr", "suggest_valley", "plot_lr_finding"]


@dataclass
class LrFinding:
    """The sweep: head learning rates and their smoothed training losses, the suggestion and why."""

    lrs: list[float]
    losses: list[float]  # exponentially smoothed (beta 0.98, debiased), one per step
    suggestion: float
    rule: str  # how `suggestion` was chosen
    steps: int = 0
    diverged: bool = False
    plot: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suggest_valley(lrs: list[float], losses: list[float]) -> tuple[float, str]:
    """fastai's "valley": the longest run of falling losses (longest decreasing subsequence, O(n^2)); the rate
    a little past its first third, where the loss falls steadily and is still far from diverging. With too few
    points, a tenth of the rate at the lowest loss (the classic rule), but not below the smallest rate swept: no
    step measured what a smaller one does."""
    n = len(losses)
    if n < 5:
        i = min(range(n), key=lambda k: losses[k])
        if lrs[i] / 10 < lrs[0]:
            return lrs[0], ("too few steps for a valley: the smallest rate swept (the loss was lowest at its start; "
                            "a tenth of that would be outside the sweep)")
        return lrs[i] / 10, "too few steps for a valley: a tenth of the rate at the lowest loss"
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    idx = max(0, min(n - 1, start + int(third) + int(third / 2)))
    return lrs[idx], (f"valley: the longest stretch of falling loss spans {lrs[max(start, 0)]:.1e}-{lrs[end]:.1e}; "
                      "the rate half-way through its second third")


class _Sweep(L.Callback):
    """Sets every parameter group's rate to its base rate x the sweep factor before each step; records the loss."""

    def __init__(self, min_lr: float, max_lr: float, steps: int, diverge: float) -> None:
        self.min_lr, self.max_lr, self.steps, self.diverge = min_lr, max_lr, steps, diverge
        self.base: list[float] = []
        self.top = 1.0
        self.current = min_lr
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg = 0.0
        self.best = math.inf
        self.diverged = False

    def lr_at(self, step: int) -> float:
        return self.min_lr * (self.max_lr / self.min_lr) ** (step / max(1, self.steps - 1))

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        optimizer = trainer.optimizers[0]
        if not self.base:  # the rates as configured (scaled alike by the schedule): groups keep their ratio
            self.base = [g["lr"] for g in optimizer.param_groups]
            self.top = max(self.base)  # the head's rate
        self.current = self.lr_at(trainer.global_step)
        factor = self.current / self.top
        for group, base in zip(optimizer.param_groups, self.base):
            group["lr"] = base * factor

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach().float().cpu())
        step = len(self.losses)
        if not math.isfinite(value):
            self.diverged = True
            trainer.should_stop = True
            return
        self.avg = 0.98 * self.avg + 0.02 * value
        smoothed = self.avg / (1 - 0.98 ** (step + 1))
        self.lrs.append(self.current)
        self.losses.append(smoothed)
        self.best = min(self.best, smoothed)
        if step > 0 and smoothed > self.diverge * self.best:
            self.diverged = True
            trainer.should_stop = True


def _check_sweep(min_lr: float, max_lr: float, steps: int) -> None:
    """UserInputError unless 0 < min_lr < max_lr, both finite (--max-lr inf was a math domain error traceback after
    the data was prepared), and steps >= 2."""
    from sightline.errors import UserInputError

    if not (0 < min_lr < max_lr < math.inf) or steps < 2:
        raise UserInputError(f"lr range test: need 0 < --min-lr ({min_lr}) < --max-lr ({max_lr}), both finite, and "
                             f"--steps ({steps}) >= 2.")


def lr_range_test(system: L.LightningModule, datamodule: L.LightningDataModule, *, steps: int = 100,
                  min_lr: float = 1e-6, max_lr: float = 1.0, diverge: float = 4.0, accelerator: str = "auto",
                  precision: str = "32-true", out: str | Path | None = None) -> LrFinding:
    """Sweep the head's learning rate from `min_lr` to `max_lr` over at most `steps` training batches of
    `datamodule` (stopping when the smoothed loss exceeds `diverge` x its lowest), then restore `system`'s
    weights. With `out`, writes OUT/lr_find.png (loss against rate, suggestion marked) and OUT/lr_find.json.

    Example:
        >>> finding = lr_range_test(system, dm, steps=100, out="runs/r1")
        >>> finding.suggestion    # e.g. 2.1e-03: pass as TrainConfig.lr
    """
    _check_sweep(min_lr, max_lr, steps)
    saved = copy.deepcopy(system.state_dict())
    # The sweep sets every rate before each step, after the system's own schedule has set it: the sweep wins.
    sweep = _Sweep(min_lr, max_lr, steps, diverge)
    from sightline.train.blocks import quiet_lightning

    try:
        with quiet_lightning():  # one process: Lightning's hardware lines would only repeat the run's
            trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=steps,
                                max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[sweep])
            trainer.fit(system, datamodule=datamodule)
    finally:
        system.load_state_dict(saved)
    if not sweep.losses:
        raise UserInputError("lr range test: the loss was not finite from the first step; check the data and "
                             "lower --lr-min.")
    suggestion, rule = suggest_valley(sweep.lrs, sweep.losses)
    finding = LrFinding(lrs=sweep.lrs, losses=sweep.losses, suggestion=float(suggestion), rule=rule,
                        steps=len(sweep.losses), diverged=sweep.diverged)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        finding.plot = str(plot_lr_finding(finding, out / "lr_find.png"))
        (out / "lr_find.json").write_text(json.dumps(finding.to_dict(), indent=2) + "\n")
    return finding


def plot_lr_finding(finding: LrFinding, path: str | Path) -> Path:
    """Loss against learning rate (log scale) with the suggestion marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(finding.lrs, finding.losses, color="#1f77b4")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate of the head (backbone at its scale)")
    ax.set_ylabel("training loss (smoothed)")
    ax.axvline(finding.suggestion, color="#d62728", linestyle="--")
    i = min(range(len(finding.lrs)), key=lambda k: abs(math.log(finding.lrs[k] / finding.suggestion)))
    ax.plot([finding.suggestion], [finding.losses[i]], "o", color="#d62728")
    ax.set_title(f"learning-rate range test: suggestion {finding.suggestion:.2e}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def find_lr(data_dir: str | Path, out_dir: str | Path, *, config: Any = None, steps: int = 100,
            min_lr: float = 1e-6, max_lr: float = 1.0, progress: bool = True, **overrides: Any) -> LrFinding:
    """`sightline lr-find`: the range test on DATA/train with the model, input size and batch size `train` would
    use for the same config; writes OUT/lr_find.png and OUT/lr_find.json. Pass the suggestion as `lr`.

    Example:
        >>> finding = find_lr("DATA", "runs/lr", model="lite0")
        >>> train("DATA", "runs/r1", lr=finding.suggestion)
    """
    from sightline.train.blocks import (build_system, choice_printer, resolve_config, training_precision,
                                        unreadable_images_hint)
    from sightline.data.datasets import refuse_out_inside_splits
    from sightline.train.prepare import prepare

    _check_sweep(min_lr, max_lr, steps)  # before the data is read and the model built
    refuse_out_inside_splits(out_dir, data_dir)  # lr_find.png there would become an image of a class
    say = choice_printer(progress)
    cfg = resolve_config(config, overrides)
    cfg = cfg.with_overrides(lr=1e-3 if cfg.lr == "auto" else cfg.lr)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prepared = prepare(data_dir, cfg, say=say)
    try:
        with unreadable_images_hint(prepared.dataset):
            prepared.dm.fill_cache()
        system = build_system(cfg, prepared.dataset.classes, prepared.dm)
        finding = lr_range_test(system, prepared.dm, steps=steps, min_lr=min_lr, max_lr=max_lr,
                                accelerator=cfg.accelerator, precision=training_precision(cfg), out=out_dir)
    finally:
        prepared.dm.close()
    finding.extra = {"input_size": prepared.pre.input_size, "model": cfg.model, "batch_size": cfg.batch_size}
    (Path(out_dir) / "lr_find.json").write_text(json.dumps(finding.to_dict(), indent=2) + "\n")
    return finding
