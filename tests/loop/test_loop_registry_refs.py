"""The models of `challenge` named by their registry version or alias (as `serve --registry` and `registry promote`
name them), and `--root` on every registry command (as `registry add` and `serve --registry` take it)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from loop_tiny import make_bundle

from sightline._cli.common import run_command
from sightline.cli import app
from sightline.loop.registry import Registry


@pytest.fixture(scope="module")
def pair(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(good, lazy): an accurate bundle and one that answers "light" for everything."""
    base = tmp_path_factory.mktemp("pair")
    good = base / "good" / "bundle"
    make_bundle(good, data / "train", seed=0, version="2")
    lazy = base / "lazy" / "bundle"
    make_bundle(lazy, data / "train", seed=1, thresholds={"class_thresholds": {"light": 0.0}})
    return good, lazy


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    from sightline.loop import report

    monkeypatch.setattr(report, "plots", lambda result, bootstrap_samples: {"difference": "", "recall": ""})


def test_challenge_takes_registry_versions_and_aliases(data: Path, pair: tuple[Path, Path], tmp_path: Path,
                                                        no_plots: None, capsys: pytest.CaptureFixture[str]) -> None:
    # before: "error: champion 'champion' does not exist; check the path." for `challenge champion v2`
    good, lazy = pair
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    assert run_command(app, ["registry", "add", str(lazy), "--alias", "champion", "--database", db]) == 0
    assert run_command(app, ["registry", "add", str(good), "--database", db]) == 0
    capsys.readouterr()
    out = tmp_path / "challenge"
    assert run_command(app, ["challenge", "champion", "v2", "--data", str(data), "--out", str(out), "--bootstrap",
                             "200", "--database", db, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    with Registry(db) as reg:
        v1, v2 = reg.resolve("v1"), reg.resolve("v2")
        assert reg.last_challenge(v2.bundle_hash)["promote"] is True  # recorded against the registered version
    assert (result["champion"]["path"], result["challenger"]["path"]) == (v1.path, v2.path)
    assert "champion: v1 (champion)" in captured.err and "challenger: v2 (v2)" in captured.err
    # the default output folder would be inside the registry's copy: --out is asked for, nothing is written there
    assert run_command(app, ["challenge", "v1", "v2", "--data", str(data), "--database", db]) == 2
    assert "is a registry copy" in capsys.readouterr().err
    assert sorted(p.name for p in Path(v2.path).iterdir()) == sorted(p.name for p in good.iterdir())


def test_challenge_refs_are_one_line_errors(data: Path, pair: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("SIGHTLINE_DATABASE_URL", raising=False)
    good, _ = pair
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    assert run_command(app, ["challenge", "v1", str(good), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'v1' is not a folder" in err and "--database" in err
    assert run_command(app, ["challenge", "v7", str(good), "--data", str(data), "--database", db]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown version 'v7'" in err
    assert run_command(app, ["challenge", "champion", str(good), "--data", str(data), "--database", db]) == 2
    assert "alias 'champion' points to no version yet" in capsys.readouterr().err


def test_every_registry_command_takes_root(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    # a registry folder given with `add --root` and moved later: promote, rollback, show and list had no --root, so
    # they looked for the copies where they were when added and refused them as "missing or changed"
    good, lazy = pair
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    first = tmp_path / "copies"
    for bundle in (lazy, good):
        assert run_command(app, ["registry", "add", str(bundle), "--alias", "champion", "--database", db, "--root",
                                 str(first)]) == 0
    moved = tmp_path / "elsewhere"
    first.rename(moved)
    capsys.readouterr()
    assert run_command(app, ["registry", "rollback", "--database", db]) == 2
    assert "missing or changed" in capsys.readouterr().err
    root = ["--database", db, "--root", str(moved)]
    assert run_command(app, ["registry", "rollback", *root]) == 0
    assert run_command(app, ["registry", "promote", "v2", *root]) == 0
    capsys.readouterr()
    assert run_command(app, ["registry", "show", "champion", "--json", *root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["intact"] and Path(shown["path"]).parent == moved
    assert run_command(app, ["registry", "list", "--json", *root]) == 0
    assert {Path(v["path"]).parent for v in json.loads(capsys.readouterr().out)} == {moved}
    assert run_command(app, ["registry", "history", *root]) == 0
    # as `serve --registry` reads SIGHTLINE_REGISTRY, so do the registry commands
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGHTLINE_REGISTRY", str(moved))
        assert run_command(app, ["registry", "rollback", "--database", db]) == 0


def test_moving_an_alias_to_other_classes_says_so(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    # a rollback to a version with other classes (undoing a forced promotion) was silent: the server following the
    # alias changed its labels without a word; it is allowed (it is the undo) and warns, as does the forced promotion
    import torch

    from sightline.bundle import Bundle
    from sightline.models.factory import create_model
    from sightline.preprocessing import Preprocessing

    good, _ = pair
    other = tmp_path / "other" / "bundle"
    torch.manual_seed(3)
    Bundle("test_efficientnet", ["dark", "light", "grey"], Preprocessing(32)).save(
        other, create_model("test_efficientnet", 3, weights="none").state_dict())
    db = ["--database", f"sqlite:///{tmp_path / 'sightline.db'}"]
    assert run_command(app, ["registry", "add", str(good), "--alias", "champion", *db]) == 0
    assert run_command(app, ["registry", "add", str(other), *db]) == 0
    capsys.readouterr()
    assert run_command(app, ["registry", "promote", "v2", *db]) == 2  # refused without --force, as before
    capsys.readouterr()
    assert run_command(app, ["registry", "promote", "v2", "--force", *db]) == 0
    err = capsys.readouterr().err
    assert "champion moved from v1 (classes dark, light) to v2 (classes dark, light, grey)" in err
    assert "now answers grey" in err
    assert run_command(app, ["registry", "rollback", *db]) == 0
    moved = [line for line in capsys.readouterr().err.splitlines() if "champion moved from" in line]
    assert len(moved) == 1 and "from v2" in moved[0] and "no longer answers grey" in moved[0]
    assert run_command(app, ["registry", "promote", "v2", "--force", "--json", *db]) == 0
    json.loads(capsys.readouterr().out)  # the warning goes to stderr: --json stays JSON


def test_retrain_takes_the_champion_by_its_registry_alias(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys) -> None:
    # `sightline retrain champion` answered "champion 'champion' does not exist"; it now resolves the alias, and the
    # registry copy it names asks for --out (its RUN would go inside the registry) before anything is trained
    from sightline.loop import retrain as retrain_module

    champion = tmp_path / "run" / "bundle"
    make_bundle(champion, data / "train", seed=2, extra={"train": {"config": {}}})  # the training config it records
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    assert run_command(app, ["registry", "add", str(champion), "--alias", "champion", "--database", db]) == 0
    capsys.readouterr()
    assert run_command(app, ["retrain", "champion", "--data", str(data), "--database", db]) == 2
    err = capsys.readouterr().err
    assert "champion: v1 (champion) = " in err and "is a registry copy; pass --out DIR" in err
    seen = {}

    def fake_retrain(run, data, *, out=None, progress=True, **overrides):  # training itself is retrain's own test
        seen.update(run=Path(run), out=out)
        return {"run": str(out)}

    monkeypatch.setattr(retrain_module, "retrain", fake_retrain)
    assert run_command(app, ["retrain", "v1", "--data", str(data), "--database", db, "--out",
                             str(tmp_path / "r2")]) == 0
    with Registry(db) as reg:
        assert seen == {"run": Path(reg.resolve("v1").path), "out": tmp_path / "r2"}
    monkeypatch.delenv("SIGHTLINE_DATABASE_URL", raising=False)
    assert run_command(app, ["retrain", "champion", "--data", str(data)]) == 2
    assert "'champion' is not a folder" in capsys.readouterr().err


def test_the_int8_warning_speaks_of_int8_servers_only(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    # 'a server following champion keeps serving v1' was printed for a move to a version without model.int8.onnx,
    # while the server of the hymenoptera loop (no --int8) swapped to it within seconds
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
    graph = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    bundles = []
    for i, b in enumerate(pair):
        copy = tmp_path / f"b{i}"
        shutil.copytree(b, copy)
        (copy / "model.onnx").write_bytes(graph.SerializeToString())
        bundles.append(copy)
    (bundles[0] / "model.int8.onnx").write_bytes(graph.SerializeToString())
    db = ["--database", f"sqlite:///{tmp_path / 'sightline.db'}"]
    for b in bundles:
        assert run_command(app, ["registry", "add", str(b), "--alias", "champion", "--force", *db]) == 0
    err = capsys.readouterr().err
    assert "v2 has no model.int8.onnx (which v1 has): a server following champion with --int8 keeps serving v1" in err


def test_registry_list_folds_instead_of_cutting(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    # in 80 columns the aliases read "challen…" and the models "sightli…"
    good, lazy = pair
    db = ["--database", f"sqlite:///{tmp_path / 'sightline.db'}"]
    assert run_command(app, ["registry", "add", str(good), "--alias", "challenger", *db]) == 0
    capsys.readouterr()
    assert run_command(app, ["registry", "list", *db]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "challeng" in out
