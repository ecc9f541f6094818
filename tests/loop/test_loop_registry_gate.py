"""The champion gate reads the challenger's verdict against the champion it would replace: a later pass against
another model (any RUN folder can be given to `challenge` as the champion) no longer lifts a failed challenge
against the champion."""
from __future__ import annotations

from pathlib import Path

import pytest
from loop_tiny import make_bundle

from sightline.errors import UserInputError
from sightline.loop.registry import Registry


def _result(champion: str, challenger: str, promote: bool) -> dict:
    return {"rule": {}, "data": "d", "files": {}, "splits": {},
            "champion": {"bundle_hash": champion}, "challenger": {"bundle_hash": challenger},
            "verdict": {"promote": promote, "reasons": ["passed" if promote else "recall fell for dark"]}}


def test_a_pass_against_another_model_does_not_lift_a_failure_against_the_champion(data: Path,
                                                                                   tmp_path: Path) -> None:
    folders = []
    for i in range(2):
        make_bundle(tmp_path / f"b{i}", data / "train", seed=i)
        folders.append(tmp_path / f"b{i}")
    with Registry(f"sqlite:///{tmp_path / 'sightline.db'}") as reg:
        champion = reg.add(folders[0], alias="champion").version
        challenger = reg.add(folders[1]).version
        reg.record_challenge(_result(champion.bundle_hash, challenger.bundle_hash, False))
        reg.record_challenge(_result("0" * 64, challenger.bundle_hash, True))  # against a strawman, later
        with pytest.raises(UserInputError, match="recall fell for dark"):
            reg.promote(challenger.ref)
        with pytest.raises(UserInputError, match="recall fell for dark"):
            reg.add(folders[1], alias="champion")
        # a pass against the champion itself opens the gate, whatever came after against other models
        passed = reg.record_challenge(_result(champion.bundle_hash, challenger.bundle_hash, True))
        reg.record_challenge(_result("1" * 64, challenger.bundle_hash, False))
        move = reg.promote(challenger.ref)
        assert move.to_ref == challenger.ref and move.challenge["id"] == passed and not move.forced


def test_show_names_what_each_challenge_was_against(data: Path, tmp_path: Path, capsys) -> None:
    from sightline._cli.common import run_command
    from sightline.cli import app

    for i in range(2):
        make_bundle(tmp_path / f"b{i}", data / "train", seed=i)
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    with Registry(db) as reg:
        champion = reg.add(tmp_path / "b0", alias="champion").version
        challenger = reg.add(tmp_path / "b1").version
        reg.record_challenge(_result(champion.bundle_hash, challenger.bundle_hash, False))
        reg.record_challenge(_result("0" * 64, challenger.bundle_hash, True))
    capsys.readouterr()
    assert run_command(app, ["registry", "show", "v2", "--database", db]) == 0
    out = capsys.readouterr().out
    assert "last challenge" in out and "(challenge 2, against an unregistered model (000000000000)): passed" in out
    assert "the champion gate reads" in out and "(challenge 1, against v1): FAILED: recall fell for dark" in out
