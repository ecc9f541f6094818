"""`sightline demo --serve`'s stream: clean, then drifted with unknown images, seeded, named as a camera names its
frames. Serving a finished demo through the real HTTP API: tests/test_demo.py (it shares the demo run)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sightline.errors import UserInputError
from sightline.serve import demo as serve_demo


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


def test_the_camera_takes_frames_of_the_datas_size_not_the_models_input_size(tmp_path: Path) -> None:
    # the demo trains at 112 px on 128 px images; frames at 112 px made the monitor's image-size test raise the
    # drift alert on the clean phase, before the camera went out of focus
    for i, side in enumerate([40, 40, 40, 56]):  # one odd size (a planted problem) does not decide it
        (tmp_path / "data" / "test" / "ok").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (side, side)).save(tmp_path / "data" / "test" / "ok" / f"ok_{i}.jpg")
    Image.new("L", (32, 32)).save(tmp_path / "data" / "test" / "ok" / "ok_0.mask.png")
    assert serve_demo.frame_size(tmp_path / "data") == 40
    with pytest.raises(UserInputError, match="no .jpg images"):
        serve_demo.frame_size(tmp_path / "empty")


def test_the_queue_size_is_the_services_total_not_one_pages_length() -> None:
    # a page of /v1/review holds at most 500; a third `demo --serve` on the same folder passed that and was told
    # "500 images wait in the review queue"
    import http.server
    import threading

    class Queue(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            assert self.headers["X-API-Key"] == "k"
            self.send_response(200)
            self.send_header("X-Total-Count", "812")
            self.end_headers()
            self.wfile.write(b"[{}]")

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Queue) as server:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        try:
            assert serve_demo.queue_size(f"http://127.0.0.1:{server.server_address[1]}", "k") == 812
        finally:
            server.shutdown()


def test_the_loop_evaluates_the_challenger_before_exporting_and_challenging_it() -> None:
    # without `evaluate` the challenge warned that its verdict would not cover the evaluated bundle and measured the
    # challenger uncalibrated (ECE 0.03 -> 0.35 in the demo)
    commands = serve_demo.loop_commands(Path("demo-run"), "sqlite:///db")
    steps = [c.split()[1] for c in commands]
    assert steps == ["feedback", "retrain", "evaluate", "export", "challenge", "registry", "registry", "registry"]
    assert commands[2].startswith("sightline evaluate demo-run/run-v2 --data demo-run/data-v2")
