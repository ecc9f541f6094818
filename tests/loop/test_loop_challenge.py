"""`challenge` end to end on tiny bundles: both models scored on the same images (checked against predictions made
outside the inference core, each bundle at its own input size), a verdict that promotes and one that does not, the
rule read from sightline.yaml, a self-contained HTML page, and one-line refusals that write nothing."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from loop_tiny import CLASSES, make_bundle, oracle_logits, oracle_predictions, write_images

from sightline._cli.common import run_command
from sightline.bundle import load_bundle
from sightline.cli import app
from sightline.decision import softmax
from sightline.errors import BundleError, DatasetError, UserInputError
from sightline.loop.challenge import challenge
from sightline.loop.content import bundle_hash

ALWAYS_LIGHT = {"class_thresholds": {"light": 0.0}}  # the served decision is "light" for every image


def _split(data: Path, name: str) -> tuple[list[Path], np.ndarray]:
    paths = sorted((data / name).rglob("*.png"))
    return paths, np.array([CLASSES.index(p.parent.name) for p in paths])


@functools.cache
def _oracle(bundle: Path, data: Path, split: str) -> np.ndarray:
    """oracle_predictions of a module bundle (never rewritten) on a split, computed once: the fixture and the two
    verdict tests ask for the same ones."""
    return oracle_predictions(load_bundle(bundle), _split(data, split)[0])


@pytest.fixture(scope="module")
def good(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An accurate bundle at 40 px (every test and production image right: checked here, outside sightline)."""
    folder = tmp_path_factory.mktemp("good") / "bundle"
    make_bundle(folder, data / "train", seed=0, input_size=40, version="2")
    for split in ("test", "production"):
        assert (_oracle(folder, data, split) == _split(data, split)[1]).all()
    return folder


@pytest.fixture(scope="module")
def lazy(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle at 32 px whose thresholds make it answer "light" for everything."""
    folder = tmp_path_factory.mktemp("lazy") / "bundle"
    make_bundle(folder, data / "train", seed=1, input_size=32, thresholds=ALWAYS_LIGHT, temperature=1.7)
    return folder


def _check_against_oracle(result: dict, data: Path, champion: Path, challenger: Path) -> None:
    for split in ("test", "production"):
        paths, y = _split(data, split)
        pa, pb = _oracle(champion, data, split), _oracle(challenger, data, split)
        s = result["splits"][split]
        assert s["n_images"] == len(paths)
        assert s["accuracy"]["champion"] == pytest.approx((pa == y).mean())
        assert s["accuracy"]["challenger"] == pytest.approx((pb == y).mean())
        assert s["mcnemar"]["champion_only"] == int(((pa == y) & (pb != y)).sum())
        assert s["mcnemar"]["challenger_only"] == int(((pb == y) & (pa != y)).sum())
        for k, c in enumerate(CLASSES):
            assert s["per_class_recall"][c]["challenger"] == pytest.approx((pb[y == k] == k).mean())
        assert s["accuracy"]["low"] <= s["accuracy"]["difference"] <= s["accuracy"]["high"]


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """challenge.html without its two matplotlib plots (about half a second a report), for tests that read the
    verdict or the page's text; test_a_better_challenger_is_promoted checks the plots."""
    from sightline.loop import report

    monkeypatch.setattr(report, "plots", lambda result, bootstrap_samples: {"difference": "", "recall": ""})


def test_a_better_challenger_is_promoted(data: Path, good: Path, lazy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = challenge(lazy, good, data, out=out, n_resamples=500)
    _check_against_oracle(result, data, lazy, good)
    test, prod = result["splits"]["test"], result["splits"]["production"]
    # The lazy champion is right on the 10 light images of each split; the challenger on all 20.
    assert (test["accuracy"]["champion"], test["accuracy"]["challenger"]) == (0.5, 1.0)
    assert (prod["mcnemar"]["challenger_only"], prod["mcnemar"]["champion_only"]) == (10, 0)
    assert prod["mcnemar"]["p_value"] == pytest.approx(2 * 0.5 ** 10)  # exact binomial, two-sided
    assert result["verdict"]["promote"] is True
    assert [c["passed"] for c in result["verdict"]["checks"]] == [True, True, True]
    # Each bundle at its own size and with its own temperature.
    assert (result["champion"]["input_size"], result["challenger"]["input_size"]) == (32, 40)
    assert result["champion"]["temperature"] == 1.7
    assert result["challenger"]["bundle_hash"] == bundle_hash(good)

    on_disk = json.loads((out / "challenge.json").read_text())
    assert on_disk["verdict"] == result["verdict"] and on_disk["splits"]["test"]["accuracy"] == test["accuracy"]
    html = (out / "challenge.html").read_text()
    assert "Promote the challenger" in html and html.count("data:image/png;base64,") == 2
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # self-contained: no external asset


def test_a_worse_challenger_is_refused_with_reasons(data: Path, good: Path, lazy: Path, tmp_path: Path,
                                                    no_plots: None) -> None:
    result = challenge(good, lazy, data, out=tmp_path / "out", n_resamples=500)
    _check_against_oracle(result, data, good, lazy)
    v = result["verdict"]
    assert v["promote"] is False
    assert [c["passed"] for c in v["checks"]] == [False, False, False]
    assert any("dark 1.000 -> 0.000" in r for r in v["reasons"])  # the class that lost its recall, by name
    assert "Do not promote the challenger" in (tmp_path / "out" / "challenge.html").read_text()


def test_the_rule_comes_from_sightline_yaml(data: Path, good: Path, tmp_path: Path, no_plots: None) -> None:
    """The same pair passes or fails as the yaml's `promotion:` says; no production split: that check is skipped."""
    copy = tmp_path / "data"
    for p in (data / "test").rglob("*.png"):
        (copy / p.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
        (copy / p.relative_to(data)).write_bytes(p.read_bytes())
    # The good model with a "dark" threshold between the 3rd and 4th highest p(dark) of the light test images:
    # exactly 3 of the 10 light images become "dark" (test accuracy -15 points, light recall -30 points).
    paths, y = _split(copy, "test")
    p_dark = np.sort(softmax(oracle_logits(load_bundle(good), paths))[y == 1, 0])[::-1]
    t = float((p_dark[2] + p_dark[3]) / 2)
    worse = make_bundle(tmp_path / "worse", data / "train", seed=0, input_size=40,
                        thresholds={"class_thresholds": {"dark": t}})
    strict = challenge(good, worse.path, copy, out=tmp_path / "o1", n_resamples=300)
    assert strict["splits"]["test"]["accuracy"]["difference"] == pytest.approx(-0.15)
    assert strict["splits"]["test"]["per_class_recall"]["light"]["change"] == pytest.approx(-0.3)
    assert strict["verdict"]["promote"] is False and strict["rule"]["max_test_drop"] == 0.01
    assert [c["passed"] for c in strict["verdict"]["checks"]] == [False, False, None]
    (copy / "sightline.yaml").write_text("promotion:\n  max_test_drop: 0.16\n  max_class_recall_drop: 0.31\n")
    loose = challenge(good, worse.path, copy, out=tmp_path / "o2", n_resamples=300)
    assert loose["verdict"]["promote"] is True and loose["rule"]["from"] == str(copy / "sightline.yaml")
    (copy / "sightline.yaml").write_text("promotion:\n  max_test_drop: 0.14\n  max_class_recall_drop: 0.31\n")
    assert challenge(good, worse.path, copy, out=tmp_path / "o3", n_resamples=300)["verdict"]["promote"] is False


def test_bad_input_is_one_line_and_writes_nothing(data: Path, good: Path, tmp_path: Path, capsys) -> None:
    grey = write_images(tmp_path / "grey", {"train": 4}, classes=("dark", "grey"))
    other = make_bundle(tmp_path / "other", grey / "train", classes=["dark", "grey"])
    out = tmp_path / "out"
    with pytest.raises(BundleError, match=r"different classes \(only the challenger has \['grey'\]; only the "
                                          r"champion has \['light'\]\)"):
        challenge(good, other.path, data, out=out)
    assert run_command(app, ["challenge", str(good), str(other.path), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # the progress bar left an empty line before it
    assert "different classes" in err
    assert not out.exists()

    no_test = tmp_path / "no_test"
    (no_test / "train" / "dark").mkdir(parents=True)
    (no_test / "train" / "dark" / "a.png").write_bytes(next((data / "train" / "dark").glob("*.png")).read_bytes())
    (no_test / "train" / "light").mkdir(parents=True)
    (no_test / "train" / "light" / "a.png").write_bytes(next((data / "train" / "light").glob("*.png")).read_bytes())
    with pytest.raises(DatasetError, match="no test split"):
        challenge(good, good, no_test, out=out)
    assert not out.exists()

    # The same model twice (here a copy of it): it was scored and its verdict was PROMOTE.
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in good.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert run_command(app, ["challenge", str(good), str(copy), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "are the same model" in err, err
    assert not out.exists()


def test_cli_exit_codes_follow_the_verdict(data: Path, good: Path, lazy: Path, tmp_path: Path, no_plots: None,
                                          capsys) -> None:
    assert run_command(app, ["challenge", str(lazy), str(good), "--data", str(data), "--out", str(tmp_path / "a"),
                 "--bootstrap", "200"]) == 0
    assert "PROMOTE" in capsys.readouterr().out
    assert run_command(app, ["challenge", str(good), str(lazy), "--data", str(data), "--out", str(tmp_path / "b"),
                 "--bootstrap", "200", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"]["promote"] is False


def test_a_recorded_verdict_gates_the_registry(data: Path, good: Path, lazy: Path, tmp_path: Path, no_plots: None,
                                              capsys) -> None:
    """`challenge --database` keeps the verdict against the challenger's content hash; `registry` then refuses to
    make that bundle the champion unless --force, and logs the forced move."""
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    assert run_command(app, ["challenge", str(good), str(lazy), "--data", str(data), "--out", str(tmp_path / "c"),
                             "--bootstrap", "200", "--database", db]) == 1
    assert "recorded in the registry as challenge 1" in capsys.readouterr().out

    assert run_command(app, ["registry", "add", str(lazy), "--alias", "champion", "--database", db]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed its last challenge" in err and "(+2 more reasons" in err
    assert not (tmp_path / "registry").exists()  # refused before anything was copied

    assert run_command(app, ["registry", "add", str(good), "--alias", "champion", "--database", db]) == 0
    assert run_command(app, ["registry", "add", str(lazy), "--database", db]) == 0
    capsys.readouterr()
    assert run_command(app, ["registry", "promote", "v2", "--database", db]) == 2
    assert run_command(app, ["registry", "promote", "v2", "--force", "--reason", "demo", "--database", db]) == 0
    assert "forced past a failed challenge" in capsys.readouterr().out
    assert run_command(app, ["registry", "history", "--json", "--database", db]) == 0
    moves = json.loads(capsys.readouterr().out)
    assert [(m["to_ref"], m["forced"], (m["challenge"] or {}).get("promote")) for m in moves] == [
        ("v1", False, None), ("v2", True, False)]


def test_class_order_may_differ(data: Path, good: Path, tmp_path: Path, no_plots: None) -> None:
    """A challenger whose model.json lists the classes in another order is compared class by class, by name."""
    flipped = make_bundle(tmp_path / "flipped", data / "train", seed=0, input_size=40, classes=["light", "dark"])
    result = challenge(good, flipped.path, data, out=tmp_path / "out", n_resamples=200)
    for split in ("test", "production"):
        s = result["splits"][split]
        assert s["accuracy"]["challenger"] == 1.0 and s["mcnemar"]["discordant"] == 0
        assert {c: r["challenger"] for c, r in s["per_class_recall"].items()} == {"dark": 1.0, "light": 1.0}
    # Equal on production is not "better": the production check fails, and says why.
    assert result["verdict"]["checks"][2]["passed"] is False and "no different" in result["verdict"]["reasons"][0]


def test_recording_the_verdict_of_an_unfinished_challenger_warns(good: Path, lazy: Path, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    """`retrain` said "next: sightline challenge"; evaluate and export came after, each rewriting the bundle, so the
    recorded verdict was kept against a hash no registered version had and a failed challenger was promoted as
    "never challenged". Recording it for a challenger not yet evaluated or exported now says so."""
    import shutil

    from sightline.loop import challenge as challenge_module

    def scored(champion, challenger, data, **kwargs):  # the verdict as `challenge` returns it, without scoring
        return {"champion": {"bundle_hash": bundle_hash(champion)},
                "challenger": {"bundle_hash": bundle_hash(challenger)}, "rule": {}, "data": str(data),
                "splits": {}, "files": {"html": "challenge.html"},
                "verdict": {"promote": False, "reasons": ["worse"]}}

    monkeypatch.setattr(challenge_module, "challenge", scored)
    args = ["--data", str(tmp_path), "--database", f"sqlite:///{tmp_path / 'sightline.db'}"]
    assert run_command(app, ["challenge", str(good), str(lazy), *args]) == 1
    err = capsys.readouterr().err
    assert "is not yet evaluated or exported" in err and "run the challenge again" in err, err

    finished = tmp_path / "finished"
    shutil.copytree(lazy, finished)
    bundle = load_bundle(finished)
    bundle.metrics = {**bundle.metrics, "test": {"split": "test", "n_images": 20, "accuracy": 0.5}}
    bundle.write_json()
    (finished / "model.onnx").write_bytes(b"not read by the challenge")
    assert run_command(app, ["challenge", str(good), str(finished), *args]) == 1
    assert "warning" not in capsys.readouterr().err


def test_a_run_folder_as_data_is_named_as_such(good: Path, lazy: Path) -> None:
    # before: "has no test split (flat layout); run `sightline data split RUN NEW`", advice that would have made a
    # dataset of the run's files
    for wrong in (good, good.parent):
        with pytest.raises(UserInputError, match="is a RUN or bundle folder, not a dataset"):
            challenge(good, lazy, wrong)


def test_a_registry_copy_as_challenger_needs_out(data: Path, good: Path, lazy: Path, tmp_path: Path) -> None:
    # the report went into the registry's copy (ROOT/<hash>/challenge/), inside a version meant to stay as added
    from sightline.loop.registry import Registry

    (tmp_path / "state").mkdir()
    with Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}") as reg:
        copy = Path(reg.add(lazy).version.path)
    with pytest.raises(UserInputError, match="is a registry copy.*pass --out DIR"):
        challenge(good, copy, data)
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in lazy.iterdir())
