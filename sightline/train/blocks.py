"""Building blocks of a training run, shared by `train`, `distill` and the probes: the resolved config, the
system (model + optimiser + loss), the Lightning Trainer with its callbacks, the fit itself and the best
checkpoint's weights; and what this machine resolves "auto" settings to (precision, memory format, processes).

Example:
    >>> cfg = resolve_config(None, {"model": "lite0"})
    >>> system = build_system(cfg, classes, dm)
    >>> parts = build_trainer(cfg, Path("runs/r1"), dm, progress=True)
    >>> seconds = fit_system(parts.trainer, system, dm, dataset)
    >>> load_best(system, parts.checkpoint.best_model_path)
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sightline.errors import ImageError, ModelError, UserInputError, one_line
from sightline.train.config import TrainConfig

__all__ = ["resolve_config", "check_accelerator", "build_system", "build_trainer", "TrainerParts", "fit_system",
           "load_best", "checkpoint_epoch", "training_precision", "use_channels_last", "uses_cuda", "cpu_has_bf16",
           "single_process", "choice_printer", "unreadable_images_hint", "quiet_lightning"]

log = logging.getLogger("sightline.train")


def resolve_config(config: TrainConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    """`config` (default TrainConfig()) with `overrides` applied and the model name resolved ('lite0' ->
    'tf_efficientnet_lite0'); a typo in the model name or the weights path fails here, before any work."""
    from sightline.models.factory import resolve_model_name

    cfg = (config or TrainConfig()).with_overrides(**overrides)
    if cfg.weights not in ("auto", "none") and not Path(cfg.weights).expanduser().is_file():
        # create_model says the same, but only after the data is scanned, cached and probed
        raise ModelError(f"weights='{cfg.weights}' is neither 'auto', 'none' nor an existing file; "
                         "pass a .safetensors/.pth file.")
    check_accelerator(cfg.accelerator)
    return cfg.with_overrides(model=resolve_model_name(cfg.model))


def check_accelerator(accelerator: str) -> None:
    """Refuse, in one line and before any work, an accelerator this machine does not have (Lightning raises a
    MisconfigurationException deep inside Trainer otherwise)."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserInputError(f"accelerator '{accelerator}' asked for, but PyTorch sees no CUDA GPU on this machine "
                             f"(torch {torch.__version__}); use --accelerator auto or cpu.")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("accelerator 'mps' asked for, but this machine has no Apple GPU PyTorch can use; use "
                             "--accelerator auto or cpu.")


def choice_printer(progress: bool) -> Callable[[str], None]:
    """Where train() reports its choices: the console (stderr) when `progress`, the log always."""
    console = None
    if progress:
        from rich.console import Console

        console = Console(stderr=True, soft_wrap=True)

    def say(message: str) -> None:
        log.info(message)
        if console is not None:
            from rich.markup import escape

            console.print(f"[bold cyan]train[/] {escape(message)}", highlight=False)

    return say


@contextmanager
def quiet_lightning(cfg: TrainConfig | None = None) -> Iterator[None]:
    """Lightning's INFO lines off while inside: it announces hardware, precision and why fitting stopped on every
    Trainer (at its construction and at fit), which `train` says in its own words (the choices it prints,
    "stopped: ..."). Warnings and errors still show. With a `cfg` that trains in several processes the lines stay:
    there they help to debug the distributed set-up."""
    if cfg is not None and not single_process(cfg):
        yield
        return
    import lightning.pytorch  # noqa: F401  (importing it sets its loggers to INFO: first import, then quiet)

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def single_process(cfg: TrainConfig) -> bool:
    """Whether this run trains in one process (probes and range tests are then run once, not once per rank)."""
    import torch

    if cfg.num_nodes > 1 or "ddp" in cfg.strategy or "fsdp" in cfg.strategy or "deepspeed" in cfg.strategy:
        return False
    devices = str(cfg.devices).replace(" ", "")
    if devices == "auto":
        return not uses_cuda(cfg) or torch.cuda.device_count() <= 1
    return devices == "1"  # a count of one; "2" or a list such as "0,1" start several processes


def training_precision(cfg: TrainConfig) -> str:
    """The Lightning precision `cfg` trains with ("auto" resolved for this machine)."""
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    # The rule where nothing is measured (several processes, lr_find, distill): bf16 autocast where the hardware
    # has bf16 units, GPUs that support it and CPUs with AMX or AVX512-BF16; elsewhere on CPU bf16 is emulated
    # and slower. `train` on one CPU process times the candidates instead (sightline.train.hardware): on an AMX
    # Xeon, bf16 was 1.27x slower than fp32 channels-last for Lite0 at 224 px and 2.2x faster for ResNet-50.
    if uses_cuda(cfg):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cfg.accelerator in ("auto", "cpu") and cpu_has_bf16() else "32-true"


def uses_cuda(cfg: TrainConfig) -> bool:
    """Whether `cfg` trains on CUDA GPUs on this machine."""
    import torch

    return cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units on this CPU (torch.cpu's capability probes; private API, hence the getattr)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def use_channels_last(cfg: TrainConfig) -> bool:
    """Whether `cfg` trains in channels-last memory format (None resolved for this machine)."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    # channels-last is what oneDNN's bf16 kernels and cuDNN's tensor cores want; in fp32 on CPU it does not pay.
    return uses_cuda(cfg) or training_precision(cfg) == "bf16-mixed"


def _devices(value: str) -> Any:
    value = str(value).strip()
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return int(value)


def build_system(cfg: TrainConfig, classes: Sequence[str], dm: Any, *, system_cls: Any = None, **extra: Any) -> Any:
    """The model of `cfg` inside its LightningModule: `system_cls` (default ClassifierSystem; e.g. distill's
    DistillSystem, which also gets `extra`) with the optimiser, schedule, loss and memory format of `cfg`.
    `cfg.lr` must be a number here ("auto" is resolved by `train`)."""
    from sightline.models.factory import create_model
    from sightline.train.system import ClassifierSystem

    if cfg.lr == "auto":
        raise UserInputError("lr='auto' must be resolved first: call train(), or lr_range_test() and pass its suggestion.")
    model = create_model(cfg.model, len(classes), weights=cfg.weights, drop_rate=cfg.drop_rate,
                         drop_path_rate=cfg.drop_path_rate)
    scale = cfg.backbone_lr_scale if str(cfg.weights) != "none" else 1.0  # nothing to preserve from scratch
    return (system_cls or ClassifierSystem)(
        model, len(classes), lr=cfg.lr, backbone_lr_scale=scale, weight_decay=cfg.weight_decay,
        schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs, label_smoothing=cfg.label_smoothing,
        freeze_epochs=cfg.freeze_epochs, monitor=cfg.monitor, class_weights=dm.class_weights(),
        channels_last=use_channels_last(cfg), **extra,
    )


@dataclass
class TrainerParts:
    """The Lightning Trainer of a run and the callbacks whose state the run reports afterwards."""

    trainer: Any
    checkpoint: Any  # ModelCheckpoint: best_model_path
    stopping: Any  # EarlyStopping: stopping_reason_message
    budget: Any = None  # TimeBudget, when cfg.time_budget is set


def build_trainer(cfg: TrainConfig, run: Path, dm: Any, *, progress: bool, started: float | None = None,
                  say: Callable[[str], None] | None = None, callbacks: Sequence[Any] = ()) -> TrainerParts:
    """The Lightning Trainer of a run: precision, devices, saturation stopping, the time budget (counted from
    `started`, a perf_counter value; default now), the best checkpoint, TensorBoard + CSV logs, and any extra
    `callbacks`. A best*.ckpt left in RUN/checkpoints by an earlier run is removed first."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from sightline.train.stopping import DivergenceCheck, TimeBudget, parse_duration, saturation_stopping

    ckpt_dir = run / "checkpoints"
    for old in ckpt_dir.glob("best*.ckpt"):
        old.unlink()  # a re-run into the same folder replaces the old best, never competes with it
    mode = "min" if cfg.monitor == "val_loss" else "max"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.monitor, mode=mode, save_top_k=1,
                                 auto_insert_metric_name=False)
    stopping = saturation_stopping(cfg.monitor, patience=cfg.patience, num_classes=len(dm.classes),
                                   label_smoothing=cfg.label_smoothing)
    all_callbacks: list[Any] = [checkpoint, stopping, LearningRateMonitor(logging_interval="epoch"), DivergenceCheck(),
                                *callbacks]
    budget = None
    if cfg.time_budget:
        budget = TimeBudget(parse_duration(cfg.time_budget), started=started or time.perf_counter(), say=say)
        all_callbacks.append(budget)
    if progress:
        all_callbacks.append(RichProgressBar(leave=True))
    loggers = [TensorBoardLogger(run, name="logs", version="tensorboard", default_hp_metric=False),
               CSVLogger(run, name="logs", version="csv")]
    precision = training_precision(cfg)
    try:
        trainer = L.Trainer(
            accelerator=cfg.accelerator, devices=_devices(cfg.devices), num_nodes=cfg.num_nodes,
            strategy=cfg.strategy, precision=precision, max_epochs=cfg.epochs,
            max_time=timedelta(seconds=cfg.max_time_s) if cfg.max_time_s else None,
            callbacks=all_callbacks, deterministic=cfg.deterministic, default_root_dir=run, logger=loggers,
            log_every_n_steps=max(1, min(10, len(dm.train_set) // cfg.batch_size)),
            num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=progress,
        )
    except (MisconfigurationException, ValueError, TypeError) as exc:
        # Lightning checks the hardware settings here and raised its own exception with a traceback: --strategy
        # nonsense or fsdp on a CPU, --devices 0,1 (GPU ids) on a CPU, deepspeed not installed.
        raise UserInputError(
            f"Lightning refused the hardware settings (--accelerator {cfg.accelerator}, --devices {cfg.devices}, "
            f"--strategy {cfg.strategy}, --num-nodes {cfg.num_nodes}, precision {precision}): "
            f"{one_line(exc).rstrip('.')}; change them, or leave them at auto.") from None
    return TrainerParts(trainer, checkpoint, stopping, budget)


@contextmanager
def unreadable_images_hint(dataset: Any) -> Iterator[None]:
    """An image whose header is fine but whose pixels are not, met while decoding (caching, probing, fitting):
    one line naming the file and saying what to do."""
    try:
        yield
    except ImageError as exc:
        raise type(exc)(f"{one_line(exc)}. Run `sightline data audit {dataset.root} --quarantine` to move "
                        "unreadable files aside, then train again.") from None


def fit_system(trainer: Any, system: Any, dm: Any, dataset: Any) -> float:
    """trainer.fit, with a one-line answer for an image that fails to decode mid-run; returns its seconds.

    Ctrl-C raises KeyboardInterrupt: Lightning answers it with its own shutdown, then sys.exit(1), which read as a
    failed run and left no way for a caller to tell an interrupt from an error."""
    started = time.perf_counter()
    try:
        with unreadable_images_hint(dataset):
            trainer.fit(system, datamodule=dm)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt(f"interrupted during epoch {trainer.current_epoch}") from None
        raise
    return time.perf_counter() - started


def checkpoint_epoch(path: str) -> int | None:
    """The epoch (0-based) a Lightning checkpoint was saved at; None without a checkpoint or when unreadable."""
    if not path:
        return None
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (KeyError, OSError, RuntimeError):
        return None


def load_best(system: Any, path: str) -> int | None:
    """Load a one-process Lightning checkpoint into `system` (as `validate(ckpt_path=...)` would: the strict
    state dict) from one read, and return its epoch. No checkpoint (`path` empty): the weights stay, None."""
    if not path:
        return None
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # what Lightning's loader does for a local file
    system.load_state_dict(ckpt["state_dict"])
    epoch = ckpt.get("epoch")
    return int(epoch) if epoch is not None else None
