"""When training stops: on a validation plateau, at the ceiling, and within a time budget (planned from the
first epoch); a budget too short for one epoch gets one line saying what happens instead."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sightline._cli.common import run_command
from sightline.cli import app
from sightline.errors import UserInputError
from sightline.train.fit import train
from sightline.train.stopping import (TimeBudget, format_duration, loss_floor, parse_duration, saturation_stopping,
                                      stop_reason)

from test_train_fit import TINY, make_data


class Scripted(L.LightningModule):
    """Logs a scripted validation score per epoch, so the stopping rule is what is under test."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.scores = scores

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_macro_f1", self.scores[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _epochs_until_stop(scores: list[float], patience: int) -> tuple[int, str]:
    loader = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4)), batch_size=4)
    rule = saturation_stopping("val_macro_f1", patience=patience, num_classes=2, label_smoothing=0.1)
    trainer = L.Trainer(max_epochs=len(scores), callbacks=[rule], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Scripted(scores), loader, loader)
    return trainer.current_epoch, stop_reason(rule, epochs_run=trainer.current_epoch, max_epochs=len(scores))


def test_stops_on_a_plateau_after_patience_epochs() -> None:
    epochs, why = _epochs_until_stop([0.5, 0.8, 0.8, 0.79, 0.95, 0.96], patience=2)
    assert epochs == 4 and why.startswith("saturated: val_macro_f1 did not improve for 2 epochs (best 0.8)")
    epochs, _ = _epochs_until_stop([0.5, 0.8, 0.81, 0.82, 0.83, 0.84], patience=2)
    assert epochs == 6  # still improving: every epoch runs


def test_stops_at_the_ceiling_at_once() -> None:
    epochs, why = _epochs_until_stop([0.7, 1.0, 1.0, 1.0], patience=10)
    assert epochs == 2 and "reached its ceiling (1.0) after 2 epochs" in why


def test_loss_floor_is_the_entropy_of_the_smoothed_targets() -> None:
    assert loss_floor(2, 0.0) == 0.0
    p = [1 - 0.1 + 0.05, 0.05]
    assert loss_floor(2, 0.1) == pytest.approx(-sum(q * math.log(q) for q in p))
    # The floor is where label-smoothed cross-entropy of perfect logits bottoms out.
    target = torch.tensor([0])
    best = min(float(nn.functional.cross_entropy(torch.tensor([[z, 0.0]]), target, label_smoothing=0.1))
               for z in torch.linspace(0, 10, 2001))
    assert best == pytest.approx(loss_floor(2, 0.1), abs=1e-4)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("300", "90s", "5m", "1h30m", "2.5m")] == [300, 90, 300, 5400, 150]
    assert [format_duration(s) for s in (0.5, 42.2, 60, 90, 3600)] == ["0.5s", "43s", "1m", "1m30s", "60m"]
    for bad in ("soon", "0", "5 parsecs", "m5", ""):
        with pytest.raises(UserInputError, match="time_budget"):
            parse_duration(bad)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fake_run(budget_s: float, *, first_batch: float, batch: float, val: float,
              max_epochs: int = 10, batches: int = 10) -> tuple[TimeBudget, SimpleNamespace, list[int], list[str]]:
    """Drive TimeBudget's hooks with a fake clock: 5 s of preparation, then epochs of `batches` batches."""
    clock = _Clock()
    notices: list[str] = []
    budget = TimeBudget(budget_s, started=0.0, reserve_s=2.0, say=notices.append, clock=clock)
    trainer = SimpleNamespace(max_epochs=max_epochs, current_epoch=0, num_training_batches=batches,
                              fit_loop=SimpleNamespace(max_epochs=max_epochs), should_stop=False, sanity_checking=False)
    planned: list[int] = []
    module = SimpleNamespace(set_planned_epochs=planned.append)
    clock.now = 5.0
    budget.on_fit_start(trainer, module)
    while not trainer.should_stop and trainer.current_epoch < trainer.fit_loop.max_epochs:
        budget.on_train_epoch_start(trainer, module)
        for i in range(batches):
            clock.now += first_batch if i == 0 and trainer.current_epoch == 0 else batch
            budget.on_train_batch_end(trainer, module, None, None, i)
        budget.on_validation_start(trainer, module)
        clock.now += val
        budget.on_validation_end(trainer, module)
        budget.on_train_epoch_end(trainer, module)
        trainer.current_epoch += 1
    return budget, trainer, planned, notices


def test_time_budget_plans_epochs_from_the_first() -> None:
    # Epoch 1: 4 + 9 x 2 + 2 (val) = 24 s, ending at 29 s; later epochs 22 s. Deadline 100 - 2 (reserve) - 2 (one
    # more validation, for the final one) = 96 s.
    budget, trainer, planned, notices = _fake_run(100, first_batch=4, batch=2, val=2)
    assert planned[0] == 1 + (96 - 29) // 24 == 3  # planned from the first epoch's time ...
    # ... re-planned from the faster second one (ends at 51 s; two more of 22 s end at 95 s <= 96 s), then kept.
    assert planned == [3, 4] and trainer.current_epoch == 4 and trainer.fit_loop.max_epochs == 4
    assert notices == [] and budget.summary()["epoch_seconds"] == [24.0, 22.0, 22.0, 22.0]


def test_time_budget_never_plans_past_max_epochs() -> None:
    _, trainer, planned, _ = _fake_run(10_000, first_batch=1, batch=1, val=1, max_epochs=4)
    assert trainer.current_epoch == 4 and max(planned) == 4


def test_budget_shorter_than_one_epoch_says_what_happens() -> None:
    budget, trainer, _, notices = _fake_run(20, first_batch=4, batch=2, val=2)
    assert trainer.current_epoch == 1  # one epoch is still trained, then it stops
    assert len(notices) == 1 and notices[0] == budget.notice
    assert notices[0] == ("time budget 20s is shorter than what ran before it (5s) plus one epoch (about 22s here): "
                          "training one epoch and stopping there; give --time-budget 49s or more to plan several "
                          "epochs.")


def test_train_with_a_tiny_budget_runs_one_epoch_and_records_why(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    run = train(data, tmp_path / "run", progress=False, **{**TINY, "epochs": 5, "time_budget": "0.1s"})
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    assert metrics["choices"]["time_budget"]["notice"].startswith("time budget 0.1s is shorter than")
    assert "time budget" in metrics["choices"]["stopping"]["stopped"]
    assert "# stopping: at most 5 epochs" in (run / "config.yaml").read_text()


def test_cli_bad_budget_and_tiny_budget_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--model", "test_efficientnet", "--weights", "none",
            "--input-size", "32", "--batch-size", "8", "--workers", "0"]
    assert run_command(app, [*args, "--time-budget", "soon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time_budget='soon' must be a positive duration" in err[0], err
    code = run_command(app, [*args, "--epochs", "3", "--time-budget", "0.1s"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if "time budget 0.1s is shorter" in line]
    assert len(lines) == 1 and "training one epoch and stopping there" in lines[0], err


@pytest.mark.parametrize("key", ["train_loss_epoch", "val_loss"])
def test_a_diverged_run_stops_with_one_line_and_no_bundle(key: str) -> None:
    """--lr 1e30 made every weight NaN in the first epoch; the model then answered one class for every image, the
    validation score stayed finite, and train wrote that bundle and exited 0."""
    from sightline.train.stopping import DivergenceCheck

    check = DivergenceCheck()
    trainer = SimpleNamespace(callback_metrics={key: torch.tensor(float("nan"))}, current_epoch=0)
    with pytest.raises(UserInputError, match=r"training diverged: the .* loss of epoch 0 is nan; no bundle was "
                                             r"written\. Lower the learning rate \(--lr, now 1e\+30"):
        check.on_train_epoch_end(trainer, SimpleNamespace(hparams=SimpleNamespace(lr=1e30)))
    trainer.callback_metrics = {"train_loss_epoch": torch.tensor(0.7), "val_loss": torch.tensor(0.6)}
    check.on_train_epoch_end(trainer, SimpleNamespace(hparams=SimpleNamespace(lr=1e-3)))  # a finite run goes on


def test_every_training_run_checks_for_divergence(tmp_path: Path) -> None:
    from sightline.train.blocks import build_trainer
    from sightline.train.config import TrainConfig
    from sightline.train.stopping import DivergenceCheck

    cfg = TrainConfig(model="test_efficientnet", weights="none", precision="32-true", accelerator="cpu")
    parts = build_trainer(cfg, tmp_path, SimpleNamespace(train_set=[0] * 8, classes=["a", "b"]), progress=False)
    assert any(isinstance(c, DivergenceCheck) for c in parts.trainer.callbacks)
