"""choose_balance: one torch-free decision that training makes and the audit reports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sightline.data.audit import imbalance
from sightline.data.balance import BALANCE_NONE_BELOW, BALANCE_WEIGHTS_UP_TO, choose_balance, class_ratio


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 149, "b": 100}, "none"),
        ({"a": 150, "b": 100}, "weights"),  # exactly BALANCE_NONE_BELOW
        ({"a": 1000, "b": 100}, "weights"),  # exactly BALANCE_WEIGHTS_UP_TO
        ({"a": 1001, "b": 100}, "sampler"),
        ({"a": 1001, "b": 100, "empty": 0}, "sampler"),  # a class without images does not count
        ({"a": 5, "empty": 0}, "none"),
        ({}, "none"),
    ],
)
def test_thresholds_and_what_the_audit_says(counts: dict[str, int], expected: str) -> None:
    assert (BALANCE_NONE_BELOW, BALANCE_WEIGHTS_UP_TO) == (1.5, 10.0)
    assert choose_balance(counts) == expected
    said = imbalance(counts)["training"]
    assert {"none": "none needed" == said, "weights": "balance=weights" in said,
            "sampler": "balance=sampler" in said}[expected], said


def test_ratio_and_requested_override() -> None:
    assert class_ratio({"a": 30, "b": 10, "c": 0}) == 3.0 and class_ratio({}) == 1.0
    assert choose_balance({"a": 1000, "b": 1}, "none") == "none"
    assert choose_balance({"a": 10, "b": 10}, "sampler") == "sampler"


def test_datamodule_reexports_the_same_function() -> None:
    from sightline.train import datamodule

    assert datamodule.choose_balance is choose_balance


def test_data_audit_command_does_not_import_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, n in (("a", 6), ("b", 2)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    code = (
        "import sys, json; from sightline.cli import main\n"
        f"try:\n    main(['data', 'audit', {str(tmp_path / 'data')!r}, '--json'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'timm', 'lightning', 'onnxruntime') if m in sys.modules]\n"
        "print('HEAVY', heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert '"class_imbalance": 1' in result.stdout and "balance=weights" in result.stdout  # 6 vs 2: ratio 3
