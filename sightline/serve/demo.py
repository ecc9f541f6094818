"""`sightline demo --serve`: the demo's model in production, with a day of trouble already behind it.

After `run_demo` (or on a finished demo folder) this registers the demo's model as the registry's champion, starts
the service with the web app, and replays a production stream through the real HTTP API: fresh images from the
demo's generator, then the same line with its camera out of focus (blur, severity 3 of the robustness suite) and
out-of-distribution images (other-domain photographs that ship with scikit-image, and synthetic textures) mixed in.
The monitor runs on windows of `WINDOW` predictions, so the drift alert is raised by the end of the stream; the
unknown and uncertain images wait in the review queue. It prints where to look and the commands that close the
loop (label -> feedback export -> retrain -> evaluate -> export -> challenge -> promote), then serves until Ctrl-C.

Everything lives under the demo folder: OUT/service (database, kept images, registry, keys.txt) and OUT/stream.
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sightline.errors import UserInputError
from sightline.progress import ProgressFn, Steps

__all__ = ["WINDOW", "DemoService", "StreamItem", "champion", "frame_size", "loop_commands", "make_stream",
           "print_summary", "queue_size", "replay"]

WINDOW = 100  # predictions per monitor window in the demo (the service's default is 500)
DRIFT = "blur"  # the camera fault of the drifted phase (sightline.evaluate.robustness)
SEVERITY = 3


@dataclass(frozen=True)
class StreamItem:
    path: Path
    phase: str  # "clean" | "drifted" | "ood"
    label: str | None  # the generator's class; None for out-of-distribution images


def _synth_images(folder: Path, n: int, size: int, seed: int) -> list[tuple[Path, str]]:
    from sightline.data.synth import synthesize

    synthesize(folder, n=n, size=size, seed=seed, layout="flat")
    return sorted((p, p.parent.name) for p in folder.glob("*/*.jpg"))


def _ood_images(size: int, n: int, seed: int) -> list[np.ndarray]:
    """n other-domain images (H, W, 3 uint8): crops of scikit-image's photographs where it is installed, and
    synthetic textures (clouds, stripes, noise ...) of the open-set stand-ins."""
    from sightline.evaluate.outliers import photo_files, synthetic_crops

    rng = np.random.default_rng(seed)
    files, _ = photo_files()
    crops: list[tuple[Path, int, int, int]] = []  # (photo, y, x, side): drawn from the sizes in the headers
    for f in files:
        with Image.open(f) as im:
            w, h = im.size
        side = min(h, w)
        for _ in range(3):  # three crops a photo, so twenty photos give enough distinct images
            s = int(rng.integers(side // 2, side + 1))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crops.append((f, y, x, s))
    textures = synthetic_crops(size, per_kind=max(2, n // 8 + 1), seed=seed).crops
    order = rng.permutation(len(crops) + len(textures))[:n]
    decoded: dict[Path, np.ndarray] = {}  # only the photos a chosen crop comes from (n is ~10 of ~60 crops)

    def image(i: int) -> np.ndarray:
        if i >= len(crops):
            return textures[i - len(crops)]
        f, y, x, s = crops[i]
        if f not in decoded:
            with Image.open(f) as im:
                decoded[f] = np.asarray(im.convert("RGB"))
        return np.asarray(Image.fromarray(decoded[f][y:y + s, x:x + s]).resize((size, size)))

    return [image(int(i)) for i in order]


def make_stream(folder: str | Path, *, size: int, seed: int, n_clean: int = 2 * WINDOW, n_drifted: int = 2 * WINDOW,
                ood_share: float = 0.2) -> list[StreamItem]:
    """Write the production stream into `folder` and return it in replay order: `n_clean` fresh images, then
    `n_drifted` in which a share `ood_share` is out of distribution and the rest is blurred. Seeded."""
    from sightline.evaluate.robustness import corrupt

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise UserInputError(f"stream folder '{folder}' is not empty; delete it or choose another folder.")
    n_ood = int(round(n_drifted * ood_share))
    fresh = _synth_images(folder / "generated", n_clean + n_drifted - n_ood, size, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(fresh))
    fresh = [fresh[i] for i in order]
    items = [StreamItem(p, "clean", label) for p, label in fresh[:n_clean]]

    drifted_dir, ood_dir = folder / "drifted", folder / "ood"
    drifted_dir.mkdir(parents=True)
    ood_dir.mkdir(parents=True)
    later: list[StreamItem] = []
    for i, (p, label) in enumerate(fresh[n_clean:]):
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))
        out = drifted_dir / f"{label}_{i:04d}.jpg"
        Image.fromarray(corrupt(rgb[None], DRIFT, SEVERITY, seed=seed + i)[0]).save(out, quality=90)
        later.append(StreamItem(out, "drifted", label))
    for i, rgb in enumerate(_ood_images(size, n_ood, seed)):
        out = ood_dir / f"ood_{i:04d}.png"
        Image.fromarray(rgb).save(out)
        later.append(StreamItem(out, "ood", None))
    return _as_frames(folder, items + [later[i] for i in rng.permutation(len(later))])


def _as_frames(folder: Path, items: list[StreamItem]) -> list[StreamItem]:
    """Move the stream's files to folder/frames/frame_NNNN.<ext> in replay order (a camera's names: the file name
    must not tell the reviewer the class) and record the truth in folder/stream.csv (frame, phase, label)."""
    import csv
    import shutil

    frames = folder / "frames"
    frames.mkdir()
    moved = []
    for i, item in enumerate(items):
        path = frames / f"frame_{i:04d}{item.path.suffix}"
        shutil.move(item.path, path)
        moved.append(StreamItem(path, item.phase, item.label))
    for part in ("generated", "drifted", "ood"):
        shutil.rmtree(folder / part, ignore_errors=True)
    with (folder / "stream.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "phase", "label"])
        writer.writerows([item.path.name, item.phase, item.label or ""] for item in moved)
    return moved


def frame_size(data: str | Path) -> int:
    """The side, px, of the demo data's test images (the most common one): the stream's camera takes frames of
    that size. Not the model's input size: the monitor compares image sizes with the data's, so frames at the
    input size would raise the drift alert on the clean phase already."""
    sizes: Counter[tuple[int, int]] = Counter()
    for path in sorted(Path(data, "test").glob("*/*.jpg")):
        with Image.open(path) as im:
            sizes[im.size] += 1
    if not sizes:
        raise UserInputError(f"'{data}/test' holds no .jpg images; run `sightline demo` again to remake it.")
    return max(sizes.most_common(1)[0][0])


def _request(url: str, *, key: str | None = None, body: bytes | None = None, content_type: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
    headers = {"X-API-Key": key} if key else {}
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise UserInputError(f"{url} answered {exc.code}: {detail}") from None


def queue_size(base: str, key: str) -> int:
    """How many predictions wait in the service's review queue: the X-Total-Count of GET /v1/review (a page holds
    at most 500, and the queue grows with each `demo --serve` on the same folder)."""
    req = urllib.request.Request(f"{base}/v1/review?limit=1", headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=30.0) as response:
        return int(response.headers["X-Total-Count"])


def _post_image(base: str, key: str, path: Path) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    return _request(f"{base}/v1/predict", key=key, body=body, content_type=f"multipart/form-data; boundary={boundary}")


def replay(base: str, key: str, stream: list[StreamItem], *, progress: ProgressFn | None = None) -> dict[str, Any]:
    """POST every image of `stream` to the service at `base`, one request each, in order; returns decision
    counts per phase and the number of predictions."""
    decisions: dict[str, Counter] = {}
    last_id = 0
    with Steps(progress, "replaying the production stream", len(stream)) as steps:
        for item in stream:
            answer = _post_image(base, key, item.path)
            for p in answer.get("predictions", []):
                decisions.setdefault(item.phase, Counter())[p.get("decision", "?")] += 1
                last_id = max(last_id, int(p.get("id") or 0))
            steps.advance()
    return {"n": len(stream), "last_id": last_id, "decisions": {phase: dict(c) for phase, c in decisions.items()}}


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, UserInputError):
            pass
        time.sleep(0.25)
    raise UserInputError(f"the demo service did not {what} within {timeout:.0f} s; see the log lines above.")


def _check_port(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserInputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port, or "
                                 f"stop what uses it.") from None


class DemoService:
    """The demo's service running in a background thread of this process: `replay_stream()` once, then `wait()`
    (until Ctrl-C) and `stop()`; or use it as a context manager, which stops it."""

    def __init__(self, out: str | Path, *, host: str = "127.0.0.1", port: int = 8000, seed: int = 0,
                 window: int = WINDOW, say: Callable[[str], None] = print) -> None:
        import uvicorn

        from sightline.loop.registry import Registry
        from sightline.serve.app import create_app
        from sightline.serve.settings import load_settings
        from sightline.storage.store import Store

        out = Path(out)
        run, data = out / "run", out / "data"
        if not (run / "bundle" / "model.int8.onnx").is_file() or not (data / "test").is_dir():
            raise UserInputError(f"'{out}' holds no finished demo (no run/bundle/model.int8.onnx or data/test); run "
                                 f"`sightline demo --out {out}` first, or `sightline demo --serve` to do both.")
        _check_port(host, port)
        self.out, self.seed, self.say, self.window = out, seed, say, window
        self.size = frame_size(data)
        service = out / "service"
        service.mkdir(exist_ok=True)
        self.url = f"sqlite:///{(service / 'sightline.db').resolve()}"
        registry_root = service / "registry"
        with Registry(self.url, root=registry_root) as registry:
            self.champion = champion(registry, run, say)
        store = Store(self.url)
        self.reviewer = store.create_key("demo-reviewer", ["review", "admin"])
        self.camera = store.create_key("demo-camera", ["predict"])
        store.close()
        self.keys_file = service / "keys.txt"
        self.keys_file.unlink(missing_ok=True)
        fd = os.open(self.keys_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as f:
            f.write(f"demo-reviewer (review, admin): {self.reviewer}\ndemo-camera (predict): {self.camera}\n")

        settings = load_settings(registry=registry_root, alias="champion", database_url=self.url, int8=True,
                                 host=host, port=port, image_store=service / "images", monitor_window=window,
                                 monitor_min_window=window, monitor_every=max(1, window // 2), keep_accepted=0.1)
        self.base = f"http://{host}:{port}"
        self._server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port,
                                                     log_level="warning", timeout_graceful_shutdown=10))
        self._thread = threading.Thread(target=self._server.run, name="sightline-demo-server", daemon=True)
        self._thread.start()
        try:
            _wait(lambda: bool(_request(f"{self.base}/readyz")) and self._thread.is_alive(), 120, "become ready")
        except BaseException:
            self.stop()
            raise

    def replay_stream(self, *, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Make the production stream (OUT/stream, replaced): two windows of clean images, then two of drifted
        and unknown ones; replay it, wait for the monitor to see its end; returns the summary (URLs, keys,
        decisions per phase, open alerts, review queue size, commands)."""
        import shutil

        stream_dir = self.out / "stream"
        if stream_dir.exists():
            shutil.rmtree(stream_dir)
        n = 2 * self.window
        self.say(f"making a production stream: {n} clean images, then {n} with the camera out of focus ({DRIFT}, "
                 f"severity {SEVERITY}) and 20 % out-of-distribution images ...")
        stream = make_stream(stream_dir, size=self.size, seed=self.seed + 1000, n_clean=n, n_drifted=n)
        replayed = replay(self.base, self.camera, stream, progress=progress)

        def monitored() -> bool:  # the monitor has looked at the last prediction
            status = _request(f"{self.base}/v1/monitor", key=self.reviewer)
            return int((status.get("windows", {}).get("recent") or {}).get("last_id") or 0) >= replayed["last_id"]

        try:
            _wait(monitored, 60, "finish its monitor run")
        except UserInputError:
            pass  # the summary says what the monitor has seen so far
        status = _request(f"{self.base}/v1/monitor", key=self.reviewer)
        return {
            "url": f"{self.base}/ui", "review": f"{self.base}/ui/review",
            "random": f"{self.base}/ui/review?slice=random", "dashboard": f"{self.base}/ui/dashboard",
            "champion": self.champion, "keys": str(self.keys_file), "reviewer_key": self.reviewer,
            "camera_key": self.camera, "decisions": replayed["decisions"],
            "open_alerts": status.get("open_alerts", []), "review_queue": queue_size(self.base, self.reviewer),
            "commands": loop_commands(self.out, self.url),
        }

    def wait(self) -> None:
        """Serve until the server stops or Ctrl-C."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> DemoService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def champion(registry: Any, run: Path, say: Callable[[str], None]) -> str:
    """The version the demo serves: on the first `--serve` the demo's model (RUN), registered and made champion; on a
    later one the champion as the loop left it, said in one line. Making RUN champion again each time rolled a
    promoted challenger back without a word (and logged it as a promotion of "the demo's model")."""
    current = registry.aliases().get("champion")
    demo = registry.add(run, by="demo", reason="the demo's model").version
    if current is None:
        registry.promote(demo.ref, alias="champion", by="demo", reason="the demo's model")
        return demo.ref
    if current.id != demo.id:
        say(f"serving the champion the loop left, {current.ref} ({current.name} {current.model_version}), not the "
            f"demo's model {demo.ref} (`sightline registry promote {demo.ref} --database {registry.url}` serves it "
            "again)")
    return current.ref


def loop_commands(out: Path, url: str) -> list[str]:
    """The commands that close the loop on the demo's service, in order. The new dataset and the challenger go to
    the first OUT/data-vN and OUT/run-vN (N >= 2) not yet there, so the commands work again after a loop has run
    (they named data-v2 and run-v2 each time, and a second `demo --serve` printed commands whose first step said
    the folder exists); the champion is named as the service follows it, by its alias, so after a promotion the
    challenger is trained from and measured against the model in production, not the demo's first one."""
    n = 2
    while (out / f"data-v{n}").exists() or (out / f"run-v{n}").exists():
        n += 1
    data, run = out / f"data-v{n}", out / f"run-v{n}"
    return [
        f"sightline feedback export --database {url} --data {out / 'data'} --out {data}",
        f"sightline retrain champion --database {url} --data {data} --out {run}",
        # evaluated before the challenge: evaluating fits the calibration and changes the bundle's content hash,
        # which the challenge's verdict names (`challenge` warns on an unevaluated challenger)
        f"sightline evaluate {run} --data {data}",
        f"sightline export {run} --int8 --data {data}",
        f"sightline challenge champion {run} --data {data} --database {url}",
        # registered as the challenger first, then promoted: `registry add --alias champion` said "won the
        # challenge" and "the service switches" while the gate refuses a challenger the challenge said DO NOT
        # PROMOTE, which on the demo's few labelled production images it does unless the challenger is clearly better
        f"sightline registry add {run} --database {url} --alias challenger",
        f"sightline registry promote challenger --database {url}   # the service switches within seconds; refused "
        f"after DO NOT PROMOTE (--force promotes anyway, logged as forced)",
        f"sightline registry rollback --database {url}   # and back, if needed",
    ]


def print_summary(s: dict[str, Any], say: Callable[[str], None]) -> None:
    """What `sightline demo --serve` prints after the replay: where to look, the keys, the loop's commands."""
    phases = ", ".join(f"{phase}: " + " ".join(f"{k} {v}" for k, v in sorted(d.items()))
                       for phase, d in s["decisions"].items())
    say(f"decisions by phase: {phases}")
    alerts = ", ".join(s["open_alerts"]) or "none yet (the monitor runs every few seconds; see the dashboard)"
    say(f"open drift alerts: {alerts}; {s['review_queue']} images wait in the review queue")
    say(f"web app: {s['url']} (sign in with the reviewer key below)")
    say(f"    review queue {s['review']}  |  dashboard {s['dashboard']}")
    say(f"reviewer key (review, admin): {s['reviewer_key']}")
    say(f"camera key (predict): {s['camera_key']}   (both saved in {s['keys']})")
    say(f"label the review queue (keys 1-9, u unknown, s skip, z undo) and the random slice {s['random']} (the "
        f"challenge's production images: it promotes only a challenger clearly better there), then close the loop:")
    for command in s["commands"]:
        say(f"    {command}")
