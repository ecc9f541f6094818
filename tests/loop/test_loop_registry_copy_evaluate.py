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
from sightline.loop.content import bundle_hash, is_registry_copy
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
