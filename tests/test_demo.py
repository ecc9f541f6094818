"""`sightline demo` from end to end on a tiny model: one quick demo run wires every stage into one folder and says
how the targets fared in its own lines; then `demo --serve` puts that finished folder into production, replays a
drifting stream with unknown images through the real HTTP API, and leaves the review queue, the drift alert and
the loop's commands waiting. One run serves both halves (a quick demo is the suite's longest single piece of work);
each half's checks are their own function. The stages' and the stream's smaller behaviours are tested beside their
code (tests/train/test_train_demo.py, tests/serve/test_serve_demo.py)."""
from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from sightline.bundle import load_bundle
from sightline.cli import main
from sightline.errors import UserInputError
from sightline.serve import demo as serve_demo
from sightline.spec import load_spec
from sightline.storage.store import Store
from sightline.train import demo

# What other libraries print unasked: ONNX Runtime's calibrators (stdout) and Lightning's Trainer (INFO log lines).
FOREIGN = ("Collecting tensor data", "Finding optimal threshold", "Number of tensors", "GPU available",
           "TPU available", "Trainer.fit` stopped", "Using bfloat16")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_quick_demo_runs_every_stage_then_serves_a_drifting_stream(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    artifacts = demo.run_demo(tmp_path / "demo", quick=True, seed=1, model="test_efficientnet", weights="none")
    out, err = capfd.readouterr()
    _check_stages(artifacts, out, err)
    with pytest.raises(UserInputError, match="not empty"):
        demo.run_demo(tmp_path / "demo", quick=True)

    finished = tmp_path / "demo"
    _check_served(finished)
    _check_refusals(finished, tmp_path, capfd, monkeypatch)


def _check_stages(artifacts: dict[str, str], out: str, err: str) -> None:
    """Every stage's output is where the demo says; the label check's stand-in reviewer moved only files
    planted_issues.json lists as wrong; every target is reported in the demo's own lines, nobody else's."""
    for key in ("raw data", "split data", "run", "bundle", "heatmaps"):
        assert Path(artifacts[key]).is_dir(), key
    for key in ("audit report", "eval metrics", "report", "model card", "onnx", "int8 onnx"):
        assert Path(artifacts[key]).is_file(), key
    for split in ("train", "val", "test"):
        assert (Path(artifacts["split data"]) / split).is_dir()
    # the planted corrupt file was quarantined by the audit, so training and evaluation never met it
    assert any((Path(artifacts["raw data"]) / ".quarantine").rglob("*"))
    metrics = json.loads(Path(artifacts["eval metrics"]).read_text())
    assert metrics["split"] == "test" and metrics["n_images"] > 0
    assert "export" in load_bundle(artifacts["run"]).extra
    assert list(Path(artifacts["heatmaps"]).glob("*.png"))
    assert "sightline serve " in artifacts["serve"]

    # the label check ran in the audit, and the stand-in reviewer moved nothing the planted list does not confirm
    raw = Path(artifacts["raw data"])
    audit = json.loads((Path(artifacts["audit report"]).parent / "audit.json").read_text())
    review = json.loads(Path(artifacts["label review"]).read_text())
    wrong = {w["path"]: w["true_label"] for w in json.loads((raw / "planted_issues.json").read_text())["wrong_labels"]}
    assert audit["label_check"]["ran"] and review["label_check"]["model"]["input_size"] == demo.QUICK.label_input_size
    assert review["flagged"] == audit["counts"]["label_issue"] == len(review["decisions"])
    assert review["planted_wrong_labels"] == len(wrong)
    assert review["planted_found"] == sum(d["path"] in wrong for d in review["decisions"])
    for d in review["decisions"]:
        if "moved_to" in d:
            assert d["moved_to"] == f"{wrong[d['path']]}/{Path(d['path']).name}" and (raw / d["moved_to"]).is_file()
            assert not (raw / d["path"]).exists()
        elif d["decision"] == "left for a reviewer":
            assert (raw / d["path"]).is_file()
    for path in set(wrong) - {d["path"] for d in review["decisions"]}:
        assert (raw / path).is_file()  # not flagged: keeps its wrong label
    # the branch above that moves a file ran: this seed's check finds its planted wrong labels and they are moved
    assert review["planted_found"] >= 1 and any("moved_to" in d for d in review["decisions"])

    # every target of the data's sightline.yaml is reported, with its verdict, in the demo's own lines
    spec = load_spec(Path(artifacts["split data"]) / "sightline.yaml")
    assert len(spec.targets) == len(metrics["targets"]) >= 3
    for target in metrics["targets"]:
        assert target["target"] in err and f"{target['value']:.3f}" in err
    assert f"{sum(t['passed'] for t in metrics['targets'])} of {len(metrics['targets'])} met" in err
    assert "seed 1" in err
    assert "plays the reviewer" in err and "planted_issues.json" in err
    assert f"{review['flagged']} images likely mislabeled" in err
    assert f"left for a reviewer: {review['left_for_a_reviewer']}" in err
    for line in FOREIGN:
        assert line not in out + err, line
    assert out == ""  # ONNX Runtime's calibration progress used to land here


def _check_served(finished_demo: Path) -> None:
    """`demo --serve` on the finished folder: every streamed image answered and kept where a person must look."""
    port = _free_port()
    said: list[str] = []
    with serve_demo.DemoService(finished_demo, port=port, seed=2, window=10, say=said.append) as service:
        summary = service.replay_stream()
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/ui/signin") as page:  # the web app is up
            assert page.status == 200
        request = urllib.request.Request(f"{base}/v1/monitor", headers={"X-API-Key": summary["reviewer_key"]})
        with urllib.request.urlopen(request) as answer:
            status = json.loads(answer.read())
    decisions = summary["decisions"]
    assert set(decisions) == {"clean", "drifted", "ood"}
    assert sum(sum(d.values()) for d in decisions.values()) == 40  # every image answered, one prediction each
    assert status["enabled"] and status["windows"]["recent"]["last_id"] >= 40  # the monitor saw the end
    assert summary["review_queue"] > 0
    db = Store(f"sqlite:///{(finished_demo / 'service' / 'sightline.db').resolve()}")
    try:
        assert db.count_predictions() == 40
        kept = db.kept_images()
        names = {k["name"]: set(k["roles"]) for k in db.list_keys()}
    finally:
        db.close()
    assert names["demo-reviewer"] == {"review", "admin"} and names["demo-camera"] == {"predict"}
    assert len(kept) >= summary["review_queue"]  # every review/unknown image is kept for the reviewer
    keys_file = Path(summary["keys"])
    assert summary["reviewer_key"] in keys_file.read_text() and keys_file.stat().st_mode & 0o077 == 0
    commands = "\n".join(summary["commands"])
    for step in ("feedback export", "retrain", "challenge", "registry add", "registry rollback"):
        assert f"sightline {step}" in commands
    serve_demo.print_summary(summary, said.append)
    assert any(summary["url"] in line for line in said) and any("registry add" in line for line in said)
    # the port is free again: the service stopped with the context (bound as a server binds: SO_REUSEADDR)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()




def _check_refusals(finished_demo: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An unfinished folder and a busy port get one line each; the CLI serves a finished demo without rebuilding it."""
    with pytest.raises(UserInputError, match="no finished demo"):
        serve_demo.DemoService(tmp_path / "empty")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserInputError, match="another --port"):
            serve_demo.DemoService(finished_demo, port=busy.getsockname()[1])

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("a finished demo is not rebuilt"))
    capfd.readouterr()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--serve", "--out", str(finished_demo), "--port", str(busy.getsockname()[1])])
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "another --port" in err and "Traceback" not in err
