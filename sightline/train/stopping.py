"""When to stop training: when validation has saturated, and within a wall-clock time budget.

- `saturation_stopping`: Lightning's EarlyStopping on the monitored validation metric with a patience of a few
  epochs and a ceiling (accuracy or macro-F1 of 1.0; for val_loss the smallest loss label smoothing allows),
  so no epoch runs after the validation set can no longer tell a better model from a worse one.
- `TimeBudget`: measures the first epoch (training + validation), then plans how many epochs fit in the budget
  and re-times the learning-rate schedule to end with them; re-plans after every epoch. A budget too short for
  one epoch gets one line saying what happens instead (one epoch, then stop).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

import lightning as L

from sightline.errors import UserInputError

__all__ = ["parse_duration", "format_duration", "loss_floor", "saturation_stopping", "stop_reason", "DivergenceCheck",
           "TimeBudget"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?", re.IGNORECASE)
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, None: 1.0}


def parse_duration(text: str | float | int, *, field: str = "time_budget") -> float:
    """'300', '300s', '5m', '1h30m', '2.5m' -> seconds. A bad or non-positive value is a one-line UserInputError."""
    raw = str(text).strip().replace(" ", "")
    pos, seconds = 0, 0.0
    for m in _DURATION.finditer(raw):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _SECONDS[m.group(2).lower() if m.group(2) else None]
        pos = m.end()
    if not raw or pos != len(raw) or seconds <= 0:
        raise UserInputError(f"{field}={text!r} is not a positive duration; write e.g. 300, 90s, 5m or 1h30m.")
    return seconds


def format_duration(seconds: float) -> str:
    """120 -> '2m', 90 -> '1m30s', 42.4 -> '43s' (rounded up: a suggestion that is enough), 0.5 -> '0.5s'."""
    if seconds < 1:
        return f"{seconds:.2g}s"
    s = int(math.ceil(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    return f"{m}m{s:02d}s" if s else f"{m}m"


def loss_floor(num_classes: int, label_smoothing: float) -> float:
    """The smallest mean cross-entropy a model can reach against label-smoothed targets: the entropy of the
    smoothed target distribution (1 - e + e/K on the true class, e/K on each other one), in nats."""
    k, e = num_classes, label_smoothing
    if e <= 0:
        return 0.0
    p_true, p_other = 1.0 - e + e / k, e / k
    return float(-(p_true * math.log(p_true) + (k - 1) * p_other * math.log(p_other)))


def saturation_stopping(monitor: str, *, patience: int, num_classes: int, label_smoothing: float) -> Any:
    """EarlyStopping that ends training when `monitor` has not improved for `patience` validations, or at once
    when it reaches its ceiling (1.0 for accuracy and macro-F1; `loss_floor` + 1e-3 for val_loss)."""
    from lightning.pytorch.callbacks import EarlyStopping

    if monitor == "val_loss":
        return EarlyStopping(monitor=monitor, mode="min", patience=patience,
                             stopping_threshold=loss_floor(num_classes, label_smoothing) + 1e-3)
    # EarlyStopping compares with '>' : a value of exactly 1.0 must count as having reached the ceiling.
    return EarlyStopping(monitor=monitor, mode="max", patience=patience, stopping_threshold=1.0 - 1e-6)


def stop_reason(stopping: Any, *, epochs_run: int, max_epochs: int, budget: TimeBudget | None = None) -> str:
    """Why a fit ended, in words: saturation (`stopping`, an EarlyStopping), the time budget, or max_epochs."""
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    reason = getattr(stopping, "stopping_reason", EarlyStoppingReason.NOT_STOPPED)
    best = stopping.best_score.item() if stopping is not None else float("nan")
    if reason == EarlyStoppingReason.STOPPING_THRESHOLD:
        ceiling = "1.0" if stopping.mode == "max" else f"{stopping.stopping_threshold:.3f}, the label-smoothing floor"
        return (f"saturated: {stopping.monitor} reached its ceiling ({ceiling}) after {epochs_run} "
                f"epoch{'s' if epochs_run != 1 else ''}; the validation set cannot show a better model")
    if reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
        epochs = f"{stopping.patience} epoch{'s' if stopping.patience != 1 else ''}"
        return f"saturated: {stopping.monitor} did not improve for {epochs} (best {best:.4g}); {epochs_run} epochs run"
    if reason != EarlyStoppingReason.NOT_STOPPED:
        return str(stopping.stopping_reason_message)
    if budget is not None and budget.planned is not None and epochs_run < max_epochs:
        return f"time budget: {epochs_run} epochs planned to fit in {format_duration(budget.budget_s)}"
    return f"max epochs: all {epochs_run} run"


class DivergenceCheck(L.Callback):
    """Stops the run with a one-line UserInputError when an epoch's training loss is NaN or infinite. A rate far too
    high (--lr 1e30) made every weight NaN in the first epoch; the model then answered one class for every image,
    validation still gave a finite score, and train wrote that bundle and exited 0. Checked once an epoch, on the
    logged mean, so no step waits on the device for it."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for key, what in (("train_loss_epoch", "training"), ("val_loss", "validation")):  # val: the weights after
            loss = trainer.callback_metrics.get(key)  # the epoch's last step (one step an epoch on a small set)
            if loss is not None and not math.isfinite(float(loss)):
                lr = getattr(pl_module.hparams, "lr", None)
                raise UserInputError(f"training diverged: the {what} loss of epoch {trainer.current_epoch} is "
                                     f"{float(loss)}; no bundle was written. Lower the learning rate (--lr"
                                     f"{f', now {lr:g}' if isinstance(lr, float) else ''}; e.g. a tenth) or pass "
                                     "--lr auto, and train again.")


class TimeBudget(L.Callback):
    """Fit training into `budget_s` seconds counted from `started` (a `time.perf_counter()` value).

    After each epoch (training + validation) the epochs still affordable are counted from the latest epoch's
    duration, keeping `reserve_s` plus one validation for the final evaluation; the Trainer's `max_epochs`
    and the system's schedule (`set_planned_epochs`) follow. `max_epochs` of the Trainer is the upper bound.
    `plan` records the decisions; `say` receives the one-line notices (too short for one epoch). `clock` is
    time.perf_counter unless a caller (a test) drives the hooks with its own: replacing the process-wide
    time.perf_counter instead stopped the clock of every thread, the ones a test leaves running included."""

    def __init__(self, budget_s: float, *, started: float, reserve_s: float = 2.0,
                 say: Callable[[str], None] | None = None, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or time.perf_counter  # looked up here, not bound when the module was imported
        self.budget_s = float(budget_s)
        self.started = started
        self.reserve_s = reserve_s
        self.say = say or (lambda message: None)
        self.epoch_started = 0.0
        self.first_batch_end = 0.0
        self.val_started: float | None = None
        self.val_s = 0.0
        self.epoch_s: list[float] = []
        self.upper = 0
        self.planned: int | None = None
        self.warned = False
        self.notice: str | None = None

    @property
    def deadline(self) -> float:
        return self.started + self.budget_s - self.reserve_s - self.val_s

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.upper = int(trainer.max_epochs or 1)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.epoch_started = self.clock()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Two batches into the first epoch, say so if one epoch will not fit; the epoch still finishes, since a
        # run needs one validated epoch to keep a model.
        if self.epoch_s or self.warned or batch_idx > 1:
            return
        now = self.clock()
        if batch_idx == 0:
            self.first_batch_end = now  # the first batch also pays for warm-up: not a typical one
            return
        epoch = (self.first_batch_end - self.epoch_started) + (now - self.first_batch_end) * (
            trainer.num_training_batches - 1)
        if self.epoch_started + epoch > self.started + self.budget_s:
            self._warn(epoch, estimated=True)

    def _warn(self, epoch_s: float, *, estimated: bool) -> None:
        self.warned = True
        before = self.epoch_started - self.started  # scanning, caching, probes, range test
        spent = f"what ran before it ({format_duration(before)}) plus " if before >= 1 else ""
        self.notice = (f"time budget {format_duration(self.budget_s)} is shorter than {spent}one epoch "
                       f"({'about ' if estimated else ''}{format_duration(epoch_s)} here): training one epoch and "
                       f"stopping there; give --time-budget {format_duration(before + 2 * epoch_s)} or more to plan "
                       "several epochs.")
        self.say(self.notice)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_started = self.clock()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.val_started is not None and not trainer.sanity_checking:
            self.val_s = self.clock() - self.val_started

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning validates before on_train_epoch_end of the same epoch: this epoch's time includes it.
        now = self.clock()
        self.epoch_s.append(now - self.epoch_started)
        done = trainer.current_epoch + 1
        if len(self.epoch_s) == 1 and now > self.started + self.budget_s and not self.warned:
            self._warn(self.epoch_s[0], estimated=False)
        more = max(0, int((self.deadline - now) // self.epoch_s[-1]))
        planned = max(done, min(self.upper, done + more))
        if planned != self.planned:
            self.planned = planned
            trainer.fit_loop.max_epochs = planned
            if hasattr(module, "set_planned_epochs"):
                module.set_planned_epochs(planned)
        if done >= planned:
            trainer.should_stop = True

    def summary(self) -> dict[str, Any]:
        """What was planned and measured, for the run's metrics."""
        return {"budget_s": self.budget_s, "planned_epochs": self.planned,
                "epoch_seconds": [round(s, 1) for s in self.epoch_s], "notice": self.notice}
