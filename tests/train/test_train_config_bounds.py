"""Training options outside what PyTorch and Lightning accept are refused in one line before any work (they were
tracebacks from deep inside the Trainer or DataLoader, or silently accepted)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sightline.errors import UserInputError
from sightline.train.blocks import check_accelerator, resolve_config
from sightline.train.config import TrainConfig, load_config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"accelerator": "tpu"}, "accelerator='tpu' must be 'auto', 'cpu', 'gpu', 'cuda' or 'mps'."),
        ({"num_workers": -1}, "num_workers=-1 must be >= 0"),
        ({"num_nodes": 0}, "num_nodes=0 must be >= 1."),
        ({"seed": -1}, "seed=-1 must be >= 0."),
        ({"seed": 2**32}, f"seed={2**32} must be <= {2**32 - 1}."),
        ({"max_time_s": -5}, "max_time_s=-5 must be > 0"),
        ({"freeze_epochs": -2}, "freeze_epochs=-2 must be >= 0."),
        # config.yaml-only fields: torch tracebacks mid-run (the first two), or trained on without a word
        ({"label_smoothing": 2}, "label_smoothing=2 must be < 1."),
        ({"drop_rate": 1.5}, "drop_rate=1.5 must be < 1."),
        ({"weight_decay": float("nan")}, "weight_decay=nan must be a finite number."),
        ({"backbone_lr_scale": -1}, "backbone_lr_scale=-1 must be >= 0."),
        ({"warmup_epochs": -3}, "warmup_epochs=-3 must be >= 0."),
    ],
)
def test_out_of_range_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=re.escape(f"training config: {message}")) as info:
        TrainConfig(**options)
    assert "\n" not in str(info.value)


def test_edges_that_are_fine_stay_fine() -> None:
    cfg = TrainConfig(num_workers=0, seed=2**32 - 1, freeze_epochs=0, max_time_s=0.5, accelerator="cpu")
    assert (cfg.num_workers, cfg.seed, cfg.max_time_s) == (0, 2**32 - 1, 0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the refusal cannot happen")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_asked_for_on_a_machine_without_one_is_refused_before_work(accelerator: str) -> None:
    with pytest.raises(UserInputError, match=f"accelerator '{accelerator}' asked for, but PyTorch sees no CUDA GPU"):
        resolve_config(None, {"accelerator": accelerator})
    check_accelerator("cpu")
    check_accelerator("auto")


def test_a_config_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00lr: \x9c\n")
    with pytest.raises(UserInputError, match=re.escape(f"config '{path}' is not UTF-8 text")):
        load_config(path)
