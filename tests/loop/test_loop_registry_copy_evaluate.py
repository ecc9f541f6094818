"""`sightline evaluate` on a registry's copy of a version: refused before anything is written, since updating the
copy rewrote its model.json and reference.npz under the registered hash (the registry then called the version
"changed" and `serve --registry` refused to start)."""
from __future__ import annotations

from pathlib import Path

import pytest
from loop_tiny import make_bundle

from sightline._cli.common import run_command
from sightline.cli import app
from sightline.errors import UserInputError
from sightline.evaluate.run import evaluate
from sightline.bundle import is_registry_copy
from sightline.loop.content import bundle_hash
from sightline.loop.registry import Registry


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_evaluate_refuses_a_registry_copy(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "run" / "bundle"
    make_bundle(source, data / "train", seed=0)
    (tmp_path / "state").mkdir()
    with Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}") as reg:
        version = reg.add(source, alias="champion").version
        copy = Path(version.path)
        before = _files(copy)
        assert is_registry_copy(copy) and not is_registry_copy(source)
        with pytest.raises(UserInputError, match="is a registry copy.*evaluate the RUN it was added from"):
            evaluate(copy, data)
        with pytest.raises(UserInputError, match="is a registry copy.*pass --out DIR"):
            evaluate(copy, data, update_bundle=False)  # the default out is ROOT/<hash>/eval
        assert run_command(app, ["evaluate", str(copy), "--data", str(data)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "registry copy" in err
        assert _files(copy) == before and reg.intact(version) and bundle_hash(copy) == version.bundle_hash


def test_the_restore_advice_holds_only_while_the_source_is_unchanged(data: Path, tmp_path: Path) -> None:
    # a damaged copy's message said `registry add SOURCE` restores it; after `evaluate` rewrote SOURCE (its
    # temperature, its reference profile) that command registered a new version and the damaged one stayed damaged
    import os
    import stat
    from dataclasses import replace

    from sightline.bundle import load_bundle

    source = tmp_path / "run" / "bundle"
    make_bundle(source, data / "train", seed=0)
    (tmp_path / "state").mkdir()
    with Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}") as reg:
        v1 = reg.add(source, alias="champion").version
        reg.add(make_bundle(tmp_path / "other" / "bundle", data / "train", seed=1).path, alias="champion")
        model_json = Path(v1.path) / "model.json"
        os.chmod(model_json, stat.S_IRUSR | stat.S_IWUSR)
        model_json.write_text(model_json.read_text().replace('"temperature": 1.0', '"temperature": 2.0'))
        assert not reg.intact(v1)
        with pytest.raises(UserInputError, match=r"`sightline registry add .*` restores them, or promote another"):
            reg.rollback()
        bundle = load_bundle(source)
        bundle.temperature = 0.5  # what evaluate does to the source
        bundle.write_json()
        with pytest.raises(UserInputError, match=r"has changed since it was added .* so adding it would register a "
                                                 r"new version, not restore v1: promote another version"):
            reg.rollback()
        assert "is gone" in reg.restore_hint(replace(v1, source=str(tmp_path / "nowhere")))


def test_export_refuses_a_registry_copy(data: Path, tmp_path: Path) -> None:
    # export replaced the copy's model.onnx and model.json, as evaluate did
    from sightline.optimize.export import export

    source = tmp_path / "run" / "bundle"
    make_bundle(source, data / "train", seed=0)
    (tmp_path / "state").mkdir()
    with Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}") as reg:
        version = reg.add(source).version
        before = _files(Path(version.path))
        with pytest.raises(UserInputError, match="is a registry copy.*export the RUN it was added from"):
            export(version.path, data_dir=data)
        assert _files(Path(version.path)) == before and reg.intact(version)
