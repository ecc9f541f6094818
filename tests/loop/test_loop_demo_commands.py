"""The registry commands `sightline demo --serve` prints, run verbatim on a registry laid out as the demo lays it
(OUT/service/sightline.db with registry/ beside it, OUT/run the champion). They printed `registry add run-v2 --alias
champion --reason 'won the challenge'   # the service switches within seconds`, which the gate refuses after the
challenge's DO NOT PROMOTE: on the demo's few labelled production images, the usual verdict."""
from __future__ import annotations

import shlex
from pathlib import Path

import torch

from sightline._cli.common import run_command
from sightline.bundle import Bundle
from sightline.cli import app
from sightline.loop.registry import Registry
from sightline.preprocessing import Preprocessing
from sightline.serve.demo import champion, loop_commands


def _run_folder(run: Path, seed: int) -> None:
    # the registry copies and hashes a bundle's files, it never builds the model: two tensors are weights enough
    weights = {"head.weight": torch.full((2, 4), float(seed)), "head.bias": torch.zeros(2)}
    Bundle("test_efficientnet", ["dark", "light"], Preprocessing(32), version=str(seed + 1),
           metrics={"test": {"split": "test", "n_images": 20, "accuracy": 0.9}}).save(run / "bundle", weights)


def _verdict(champion: str, challenger: str, promote: bool) -> dict:
    return {"rule": {}, "data": "d", "files": {}, "splits": {}, "champion": {"bundle_hash": champion},
            "challenger": {"bundle_hash": challenger},
            "verdict": {"promote": promote, "reasons": ["better on production" if promote else "no different"]}}


def test_the_printed_registry_commands_work_verbatim_after_either_verdict(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo-run"
    _run_folder(out / "run", 0)
    (out / "service").mkdir()
    url = f"sqlite:///{out / 'service' / 'sightline.db'}"
    printed = loop_commands(out, url)  # printed before the loop makes run-v2
    _run_folder(out / "run-v2", 1)
    with Registry(url, root=out / "service" / "registry") as reg:  # as DemoService registers the demo's model
        champion = reg.add(out / "run", alias="champion").version
    add, promote, rollback = [shlex.split(c, comments=True) for c in printed[-3:]]
    assert [c[:3] for c in (add, promote, rollback)] == [["sightline", "registry", "add"],
                                                         ["sightline", "registry", "promote"],
                                                         ["sightline", "registry", "rollback"]]
    assert "--force" in printed[-2]  # the way past DO NOT PROMOTE, named where it is refused

    assert run_command(app, add[1:]) == 0  # registered whatever the verdict: the challenger, not yet served
    with Registry(url) as reg:
        challenger = reg.aliases()["challenger"]
        assert reg.aliases()["champion"].id == champion.id and challenger.ref == "v2"
        reg.record_challenge(_verdict(champion.bundle_hash, challenger.bundle_hash, False))
    capsys.readouterr()
    assert run_command(app, promote[1:]) == 2  # DO NOT PROMOTE: refused in one line naming --force
    err = capsys.readouterr().err
    assert "no different" in err and "--force" in err and "Traceback" not in err
    with Registry(url) as reg:
        assert reg.aliases()["champion"].id == champion.id
        reg.record_challenge(_verdict(champion.bundle_hash, challenger.bundle_hash, True))
    assert run_command(app, promote[1:]) == 0  # PROMOTE: the champion moves, the service follows it
    with Registry(url) as reg:
        assert reg.aliases()["champion"].ref == "v2"
    assert run_command(app, rollback[1:]) == 0
    with Registry(url) as reg:
        assert reg.aliases()["champion"].ref == "v1"


def test_the_summary_sends_the_reviewer_to_the_random_slice_the_challenge_scores() -> None:
    from sightline.serve.demo import print_summary

    lines: list[str] = []
    print_summary({"decisions": {}, "open_alerts": [], "review_queue": 3, "url": "u/ui", "review": "u/ui/review",
                   "random": "u/ui/review?slice=random", "dashboard": "u/ui/dashboard", "reviewer_key": "r",
                   "camera_key": "c", "keys": "k", "commands": loop_commands(Path("demo-run"), "sqlite:///db")},
                  lines.append)
    label = next(line for line in lines if line.startswith("label"))
    assert "u/ui/review?slice=random" in label and "production" in label


def test_serving_the_demo_again_keeps_the_champion_the_loop_promoted(tmp_path: Path) -> None:
    # each `demo --serve` made the demo's model champion again: after a promotion, the next `make demo-serve`
    # rolled the service back to v1 without a word, logged as a promotion of "the demo's model"
    _run_folder(tmp_path / "run", 0)
    _run_folder(tmp_path / "run-v2", 1)
    said: list[str] = []
    with Registry(f"sqlite:///{tmp_path / 'sightline.db'}") as reg:
        assert champion(reg, tmp_path / "run", said.append) == "v1" and said == []
        assert champion(reg, tmp_path / "run", said.append) == "v1" and said == []  # served again: nothing moves
        reg.add(tmp_path / "run-v2", alias="champion")
        assert champion(reg, tmp_path / "run", said.append) == "v2"
        assert reg.aliases()["champion"].ref == "v2" and [m.to_ref for m in reg.history("champion")] == ["v1", "v2"]
    assert len(said) == 1 and "v2" in said[0] and "registry promote v1 --database sqlite:///" in said[0]


def test_after_a_loop_the_commands_name_new_folders_and_the_champion_by_its_alias(tmp_path: Path) -> None:
    # a second `demo --serve` printed `feedback export --out data-v2` again ("already exists"), and retrained from
    # and challenged the demo's first model (OUT/run) even after the loop had promoted another
    first = loop_commands(tmp_path, "sqlite:///db")
    assert f"--out {tmp_path / 'data-v2'}" in first[0] and f"--out {tmp_path / 'run-v2'}" in first[1]
    assert first[1].startswith("sightline retrain champion --database sqlite:///db ")
    assert first[4].startswith(f"sightline challenge champion {tmp_path / 'run-v2'} ")
    (tmp_path / "data-v2").mkdir()
    (tmp_path / "run-v3").mkdir()  # a run the user made by hand: neither number is reused
    again = loop_commands(tmp_path, "sqlite:///db")
    assert f"--out {tmp_path / 'data-v4'}" in again[0] and all("-v2" not in c and "-v3" not in c for c in again)
