"""`retrain`: a challenger trained with the champion's recorded settings on the new dataset version (one tiny real
training run), and the refusals that train nothing: no new labels, other classes, an occupied --out, a champion
without a recorded config."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from loop_tiny import make_bundle, write_images

from sightline._cli.common import run_command
from sightline.bundle import load_bundle
from sightline.cli import app
from sightline.data.datasets import dataset_version, scan_dataset
from sightline.errors import BundleError, DatasetError, UserInputError
from sightline.loop.retrain import next_version, retrain
from sightline.train.config import TrainConfig

# Set, not chosen by train: fp32 contiguous (no hardware probe timing candidates) and no monitor reference profile
# (half of each tiny training); the tests are about what retrain carries over, and the config travels whole.
SETTINGS = {"model": "test_efficientnet", "weights": "none", "epochs": 1, "input_size": 32, "batch_size": 8,
            "num_workers": 0, "lr": 0.002, "seed": 3, "precision": "32-true", "channels_last": False,
            "reference": False}


@pytest.fixture(scope="module")
def champion(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A champion bundle that records its training settings and the dataset version it was trained on (as
    `sightline train` writes them; made by hand here so that the module trains only once)."""
    run = tmp_path_factory.mktemp("champion")
    make_bundle(run / "bundle", data / "train", name="pets", version="4",
                dataset_version=dataset_version(scan_dataset(data)),
                extra={"train": {"config": TrainConfig(**SETTINGS).to_dict()}})
    return run


def test_retrain_uses_the_champions_settings_on_the_new_data(data: Path, champion: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    new = tmp_path / "data-v2"
    shutil.copytree(data, new)
    write_images(new, {"train": 1}, seed=7)  # two reviewed images: one per class
    result = retrain(champion, new, out=tmp_path / "challenger", progress=False, seed=5)

    bundle = load_bundle(result["bundle"])
    old = load_bundle(champion)
    assert bundle.extra["train"]["config"] == {**old.extra["train"]["config"], "seed": 5}  # only the override differs
    assert (bundle.architecture, bundle.classes, bundle.preprocessing.input_size) == ("test_efficientnet",
                                                                                      old.classes, 32)
    assert (bundle.name, bundle.version) == ("pets", "5")
    assert bundle.dataset_version == dataset_version(scan_dataset(new)) != old.dataset_version
    assert result["dataset_version"] == bundle.dataset_version and result["champion_dataset_version"] == \
        old.dataset_version
    assert bundle.extra["retrain"]["champion"] == str(old.path) and bundle.extra["retrain"]["overrides"] == {"seed": 5}
    assert bundle.metrics["val"]["n_images"] == 8 and result["val"] == bundle.metrics["val"]
    assert bundle.extra["train"]["data_dir"] == str(new.resolve())
    assert json.loads((Path(result["run"]) / "metrics.json").read_text())["train_images"] == 18  # 16 + 2 new

    with pytest.raises(UserInputError, match="already holds a bundle; pass --out to a new folder"):
        retrain(champion, new, out=tmp_path / "challenger", progress=False)
    (tmp_path / "a-file").write_text("notes\n")  # refused once training had begun, after its first line of output
    assert run_command(app, ["retrain", str(champion), "--data", str(new), "--out", str(tmp_path / "a-file")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --out") and captured.err.count("\n") == 1 and "is a file" in captured.err
    assert captured.out == "" and (tmp_path / "a-file").read_text() == "notes\n"


def test_refusals_train_nothing(data: Path, champion: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=r"is dataset version [0-9a-f]{16}, the one the champion .* was trained "
                                             r"on: no new labels"):
        retrain(champion, data, out=out, progress=False)
    assert run_command(app, ["retrain", str(champion), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no new labels" in err

    other = write_images(tmp_path / "other", {"train": 2, "val": 1}, classes=("dark", "grey", "light"))
    with pytest.raises(DatasetError, match=r"has classes \['dark', 'grey', 'light'\] but the champion"):
        retrain(champion, other, out=out, progress=False)

    # the champion's RUN folder (or its bundle) as --data; before: "no train/val split (flat layout); run
    # `sightline data split RUN NEW`", an advice that would have made a dataset of the run's files
    for wrong in (champion, champion / "bundle"):
        with pytest.raises(UserInputError, match="is a RUN or bundle folder, not a dataset"):
            retrain(champion, wrong, out=out, progress=False)

    bare = tmp_path / "bare"
    make_bundle(bare / "bundle", data / "train")
    with pytest.raises(BundleError, match="records no training config"):
        retrain(bare, data, out=out, progress=False)
    assert not out.exists()


def test_next_version() -> None:
    assert [next_version(v) for v in ("1", "9", "1.4", "2024.10", "beta")] == ["2", "10", "1.5", "2024.11", "beta.1"]
    # past the versions the registry holds: a second retrain of champion "1" after "2" was registered is "3"
    assert next_version("1", {"1", "2"}) == "3" and next_version("beta", {"beta.1"}) == "beta.2"
    assert next_version("1.4", {"2", "1.6"}) == "1.5"


def test_retrain_names_evaluate_and_export_before_the_challenge(tmp_path: Path, monkeypatch, capsys) -> None:
    from sightline.loop import retrain as retrain_module

    (tmp_path / "champion").mkdir()
    (tmp_path / "new").mkdir()
    run = str(tmp_path / "challenger")
    monkeypatch.setattr(retrain_module, "retrain", lambda *a, **k: {
        "run": run, "bundle": f"{run}/bundle", "version": "2", "champion": str(tmp_path / "champion"),
        "champion_version": "1", "champion_dataset_version": "aaa", "dataset_version": "bbb", "val": None})
    assert run_command(app, ["retrain", str(tmp_path / "champion"), "--data", str(tmp_path / "new")]) == 0
    nxt = capsys.readouterr().out.splitlines()[-1]
    assert nxt.index("sightline evaluate") < nxt.index("sightline export") < nxt.index("sightline challenge"), nxt


def test_a_retrain_interrupted_after_its_bundle_is_written_runs_again(data: Path, champion: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Training writes RUN/bundle/ before its reference profile (seconds on real photos); a Ctrl-C there left a
    bundle with the champion's version string and no lineage, and running the retrain again was refused ("already
    holds a bundle"). The same retrain now replaces it, and `challenge` refuses the unfinished one meanwhile."""
    from sightline.loop.challenge import challenge
    from sightline.train import fit

    new = tmp_path / "data-v2"
    shutil.copytree(data, new)
    write_images(new, {"train": 1}, seed=7)
    calls = []

    def fake_train(data_dir, out_dir, *, config, progress):  # the bundle as `train` writes it, then maybe Ctrl-C
        shutil.copytree(champion / "bundle", Path(out_dir) / "bundle", dirs_exist_ok=True)
        bundle = load_bundle(out_dir)
        bundle.dataset_version = dataset_version(scan_dataset(data_dir))
        bundle.write_json()
        calls.append(out_dir)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return Path(out_dir)

    monkeypatch.setattr(fit, "train", fake_train)
    out = tmp_path / "challenger"
    with pytest.raises(KeyboardInterrupt):
        retrain(champion, new, out=out, progress=False)
    assert load_bundle(out).version == "4"  # the champion's: not a challenger yet
    with pytest.raises(UserInputError, match="did not finish"):
        challenge(champion, out, new)
    result = retrain(champion, new, out=out, progress=False)
    assert len(calls) == 2 and load_bundle(out).version == result["version"] == "5"
    assert load_bundle(out).extra["retrain"]["champion_version"] == "4"
    with pytest.raises(UserInputError, match="already holds a bundle"):  # a finished one stays refused
        retrain(champion, new, out=out, progress=False)

    def failing_train(data_dir, out_dir, *, config, progress):
        raise DatasetError("bad data")

    monkeypatch.setattr(fit, "train", failing_train)
    with pytest.raises(DatasetError):
        retrain(champion, new, out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()  # nothing written when training fails before its bundle


def test_a_registry_copy_as_champion_needs_out(data: Path, champion: Path, tmp_path: Path) -> None:
    # `retrain ROOT/<hash>` (the champion as the registry keeps it) put the challenger's RUN beside it, inside ROOT
    from sightline.loop.registry import Registry

    new = tmp_path / "data-v2"
    shutil.copytree(data, new)
    write_images(new, {"train": 1}, seed=7)
    (tmp_path / "state").mkdir()
    with Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}") as reg:
        copy = Path(reg.add(champion).version.path)
    with pytest.raises(UserInputError, match="is a registry copy; pass --out DIR"):
        retrain(copy, new, progress=False)
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]


def test_a_retrain_through_the_registry_counts_its_version_past_those_registered(data: Path, champion: Path,
                                                                                  tmp_path: Path) -> None:
    """Two retrains of one champion ("4") were both "5": after one was registered, the next is "6"."""
    from sightline.loop.registry import Registry

    earlier = tmp_path / "earlier"
    shutil.copytree(champion, earlier)
    bundle = load_bundle(earlier)
    bundle.version = "5"  # an earlier challenger of the same model, registered
    bundle.write_json()
    (tmp_path / "state").mkdir()
    database = f"sqlite:///{tmp_path / 'state' / 'sightline.db'}"
    with Registry(database) as reg:
        reg.add(champion, alias="champion")
        reg.add(earlier)
    new = tmp_path / "data-v2"
    shutil.copytree(data, new)
    write_images(new, {"train": 1}, seed=7)
    out = tmp_path / "challenger"
    assert run_command(app, ["retrain", "champion", "--database", database, "--data", str(new), "--out", str(out),
                             "--json"]) == 0
    assert (load_bundle(out).name, load_bundle(out).version) == ("pets", "6")
