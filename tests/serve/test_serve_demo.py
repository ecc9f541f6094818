"""`sightline demo --serve`: a finished demo goes into production, a drifting stream with unknown images is
replayed through the real HTTP API, and the review queue, the drift alert and the loop's commands are waiting."""
from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from sightline.errors import UserInputError
from sightline.serve import demo as serve_demo
from sightline.storage.store import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_stream_is_clean_then_drifted_with_unknown_images(tmp_path: Path) -> None:
    stream = serve_demo.make_stream(tmp_path / "s", size=48, seed=5, n_clean=12, n_drifted=20, ood_share=0.25)
    phases = [item.phase for item in stream]
    assert phases[:12] == ["clean"] * 12 and sorted(set(phases[12:])) == ["drifted", "ood"]
    assert phases.count("ood") == 5 and phases.count("drifted") == 15
    assert all(item.path.is_file() for item in stream) and len({item.path for item in stream}) == len(stream)
    assert all((item.label is None) == (item.phase == "ood") for item in stream)
    with Image.open(next(i.path for i in stream if i.phase == "drifted")) as im:
        assert im.size == (48, 48)
    # a camera's file names, in replay order; the truth only in stream.csv
    assert [i.path.name.split(".")[0] for i in stream] == [f"frame_{n:04d}" for n in range(len(stream))]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["frames", "stream.csv"]
    rows = (tmp_path / "s" / "stream.csv").read_text().splitlines()
    assert len(rows) == len(stream) + 1 and rows[1].startswith("frame_0000.jpg,clean,")
    again = serve_demo.make_stream(tmp_path / "t", size=48, seed=5, n_clean=12, n_drifted=20, ood_share=0.25)
    assert [i.path.read_bytes() for i in stream] == [i.path.read_bytes() for i in again]  # seeded
    with pytest.raises(UserInputError, match="not empty"):
        serve_demo.make_stream(tmp_path / "t", size=48, seed=5)


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sightline.train.demo import run_demo

    out = tmp_path_factory.mktemp("served") / "demo"
    run_demo(out, quick=True, seed=2, model="test_efficientnet", weights="none")
    return out


@pytest.mark.slow  # the module's finished demo: a whole quick demo run
def test_demo_serve_replays_the_stream_and_leaves_the_loop_ready(finished_demo: Path) -> None:
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


def test_demo_serve_refuses_an_unfinished_folder_and_a_busy_port(tmp_path: Path, finished_demo: Path) -> None:
    with pytest.raises(UserInputError, match="no finished demo"):
        serve_demo.DemoService(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserInputError, match="another --port"):
            serve_demo.DemoService(finished_demo, port=busy.getsockname()[1])


def test_cli_demo_serve_on_a_finished_demo_only_serves(finished_demo: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from sightline.cli import main
    from sightline.train import demo as train_demo

    monkeypatch.setattr(train_demo, "run_demo", lambda *a, **k: pytest.fail("a finished demo is not rebuilt"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--serve", "--out", str(finished_demo), "--port", str(busy.getsockname()[1])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "another --port" in err and "Traceback" not in err
