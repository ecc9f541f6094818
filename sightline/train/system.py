"""The training system: loss, steps, metrics and optimiser around a plain timm `nn.Module` (Lightning style guide).

- AdamW, weight decay on weights only (not on norms and biases, which it would only pull towards zero);
- head at `lr`, pretrained backbone at `lr * backbone_lr_scale`;
- schedule: linear warm-up then cosine to zero, stepped per batch; or reduce-on-plateau by 10x on the monitor;
- label-smoothed cross-entropy, optionally class-weighted;
- optional freeze-then-unfreeze: only the head trains for the first `freeze_epochs` epochs.
Logged metrics: train_loss, val_loss, val_acc, val_macro_f1 (macro F1 over classes).
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

__all__ = ["ClassifierSystem", "head_parameter_names"]


class _NoTips(logging.Filter):
    """Lightning advertises a cloud logger on every Trainer start; our users read the console for their run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())
# Lightning 2.6 calls a torch pytree API that torch deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters (timm `pretrained_cfg["classifier"]`, e.g. 'classifier' or 'fc')."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    prefix = cfg.get("classifier", "classifier")
    prefix = prefix[0] if isinstance(prefix, (list, tuple)) else prefix
    return {n for n, _ in model.named_parameters() if n == prefix or n.startswith(f"{prefix}.")}


class ClassifierSystem(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        lr: float = 1e-3,
        backbone_lr_scale: float = 0.1,
        weight_decay: float = 0.01,
        schedule: str = "cosine",
        warmup_epochs: float = 0.25,
        label_smoothing: float = 0.1,
        freeze_epochs: int = 0,
        monitor: str = "val_macro_f1",
        class_weights: torch.Tensor | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "class_weights"])
        self.model = model
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(num_classes))
        self.head_names = head_parameter_names(model)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=num_classes, average="macro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N, K) logits."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), y, weight=self.class_weights,
                                           label_smoothing=self.hparams.label_smoothing)

    # --- steps -------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.freeze_epochs
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in self.head_names or not frozen)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.val_f1.update(logits, y)
        self.log("val_loss", self._loss(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log("val_macro_f1", self.val_f1, on_epoch=True, prog_bar=True)

    # --- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            is_head = name in self.head_names
            decay = p.ndim > 1  # conv / linear weights; not norms and biases
            groups.setdefault((is_head, decay), []).append(p)
        param_groups = [
            {"params": params, "lr": hp.lr * (1.0 if is_head else hp.backbone_lr_scale),
             "weight_decay": hp.weight_decay if decay else 0.0}
            for (is_head, decay), params in groups.items()
        ]
        optimizer = torch.optim.AdamW(param_groups, lr=hp.lr)
        if hp.schedule == "plateau":
            mode = "min" if hp.monitor == "val_loss" else "max"
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.1, patience=3)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": hp.monitor, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        self._steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        self._total_steps = total
        warmup = min(total - 1, int(round(hp.warmup_epochs * self._steps_per_epoch)))

        def factor(step: int) -> float:
            # Reads the horizon at every step: a time budget may re-plan the number of epochs mid-run.
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, self._total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def set_planned_epochs(self, epochs: int) -> None:
        """End the cosine schedule with epoch `epochs` instead of the Trainer's max_epochs (a time budget's plan)."""
        if hasattr(self, "_steps_per_epoch"):
            self._total_steps = max(1, self._steps_per_epoch * int(epochs))
