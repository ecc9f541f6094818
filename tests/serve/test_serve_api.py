"""The HTTP service through a real client against uvicorn on 127.0.0.1: auth, every DESIGN.md error code, a
hostile-input corpus, the review queue, and every 2xx prediction in the database."""
from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serve_tiny import encode, make_bundle, pg_options, photo, start_server, tls

CLASSES = ["cat", "dog", "fox"]
MAX_PIXELS = 1_000_000
MAX_BODY = 300_000


def _photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    return photo(seed, w, h)


def hostile_corpus() -> dict[str, tuple[bytes, set[int]]]:
    """name -> (bytes, accepted statuses). Valid-but-unusual images must be answered (200)."""
    jpeg = encode(_photo(), "JPEG")
    exif_img = _photo(64, 32)
    exif = exif_img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    pal = Image.new("P", (40, 30))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (10, 10, 30, 20))
    bomb = Image.new("1", (1200, 1000))  # 1.2 Mpx > the 1 Mpx cap, a few hundred bytes as PNG
    return {
        "zero.jpg": (b"", {415, 422}),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], {422}),
        "bomb.png": (encode(bomb, "PNG"), {413}),
        "text.jpg": (b"this is a text file, not a picture\n" * 20, {415}),
        "doc.jpg": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", {415}),
        "cmyk.jpg": (encode(Image.new("CMYK", (40, 30), (0, 128, 255, 0)), "JPEG"), {200}),
        "gray16.png": (encode(Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), "PNG"), {200}),
        "palette_alpha.png": (encode(pal, "PNG", transparency=0), {200}),
        "exif_rotated.jpg": (encode(exif_img, "JPEG", exif=exif.tobytes()), {200}),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """uvicorn serving a tiny exported bundle on a free loopback port, in a thread."""
    from sightline.serve.app import create_app
    from sightline.serve.settings import Settings
    from sightline.storage.store import Store

    root = tmp_path_factory.mktemp("serve")
    # review_confidence 0.99: an untrained 3-class model is never that sure, so every answer is queued
    make_bundle(root, version="7")
    # SIGHTLINE_TEST_DATABASE_URL=postgresql+psycopg://... runs this whole module against that database (emptied
    # first); by default a SQLite file in the bundle folder.
    url = os.environ.get("SIGHTLINE_TEST_DATABASE_URL")
    url = pg_options(url) if url else None
    settings = Settings(
        bundle=root / "bundle", max_pixels=MAX_PIXELS, max_body_bytes=MAX_BODY, max_images_per_request=4,
        rate_limit_per_minute=0, key_cache_s=0, batch_max_wait_ms=20, threads=1, database_url=url,
    )
    if url:
        from sightline.storage.store import Base

        scratch = Store(url)
        Base.metadata.drop_all(scratch.engine)
        scratch.close()
    store = Store(settings.resolved_database_url())
    keys = {name: store.create_key(name, ["predict", "review"]) for name in ("alice", "bob")}
    app = create_app(settings)
    srv, thread, port = start_server(app)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, verify=tls()) as client:
        yield {"client": client, "keys": keys, "store": store, "app": app, "url": f"http://127.0.0.1:{port}",
               "settings": settings}
    srv.should_exit = True
    thread.join(timeout=30)
    store.close()


def _post(client, key, files, **kw):
    headers = {"X-API-Key": key} if key else {}
    return client.post("/v1/predict", files=[("file", f) for f in files], headers=headers, **kw)


def test_health_model_docs_and_metrics(server):
    c = server["client"]
    assert c.get("/healthz").json()["status"] == "ok"
    ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"model": True, "database": True,
                                                                "database_writable": True}
    info = c.get("/v1/model").json()
    assert info["classes"] == CLASSES and info["name"] == "pets" and info["version"] == "7"
    assert info["preprocessing"]["input_size"] == 32 and info["runtime"]["backend"] == "onnx"
    assert "/v1/predict" in c.get("/openapi.json").json()["paths"]
    assert c.get("/docs").status_code == 200
    text = c.get("/metrics").text
    assert "sightline_http_requests_total" in text and "sightline_batcher_pending_images 0.0" in text


def test_auth(server):
    c, keys, store = server["client"], server["keys"], server["store"]
    image = ("a.jpg", encode(_photo(), "JPEG"))
    r = _post(c, None, [image])
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _post(c, "sl_" + "x" * 43, [image]).status_code == 401
    assert _post(c, keys["alice"][:-1] + ("A" if keys["alice"][-1] != "A" else "B"), [image]).status_code == 401
    ok = c.post("/v1/predict", files=[("file", image)], headers={"Authorization": f"Bearer {keys['alice']}"})
    assert ok.status_code == 200
    revoked = store.create_key("mallory")
    assert _post(c, revoked, [image]).status_code == 200
    assert store.revoke_key("mallory") == 1
    assert _post(c, revoked, [image]).status_code == 401
    assert c.get("/v1/review", headers={}).status_code == 401


def test_predict_answer_matches_the_contract_and_the_database(server):
    from sightline.bundle import load_bundle
    from sightline.data.images import load_image
    from sightline.data.transforms import eval_preprocess, stack

    c, key, store = server["client"], server["keys"]["alice"], server["store"]
    blobs = [encode(_photo(seed=i), "JPEG") for i in range(3)]
    r = _post(c, key, [(f"p{i}.jpg", b) for i, b in enumerate(blobs)])
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == {"name": "pets", "version": "7"} and body["inference_ms"] > 0
    assert [p["filename"] for p in body["predictions"]] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    # the served (ONNX) answers against the bundle's PyTorch model on the same pixels: temperature 1, no class
    # thresholds, so the label is the arg-max, and every answer below 0.99 confidence goes to review
    bundle = load_bundle(server["settings"].bundle)
    x = torch.from_numpy(stack([eval_preprocess(load_image(b), bundle.preprocessing) for b in blobs]))
    with torch.no_grad():
        probs = torch.softmax(bundle.load_model()(x), dim=1).numpy()
    for p, blob, prob in zip(body["predictions"], blobs, probs):
        assert p["label"] == CLASSES[int(prob.argmax())] and p["confidence"] == pytest.approx(prob.max(), abs=1e-5)
        assert p["decision"] == ("review" if prob.max() < 0.99 else "accept")
        assert [t["label"] for t in p["top_k"]] == [CLASSES[i] for i in np.argsort(-prob)]
        assert [t["confidence"] for t in p["top_k"]] == pytest.approx(np.sort(prob)[::-1].tolist(), abs=1e-5)
        row = store.get_prediction(p["id"])
        assert row["input_sha256"] == hashlib.sha256(blob).hexdigest()
        assert row["label"] == p["label"] and row["model_version"] == "7" and row["decision"] == "review"
        assert row["confidence"] == pytest.approx(p["confidence"]) and row["latency_ms"] > 0


def test_hostile_corpus_gets_documented_4xx_and_server_keeps_answering(server):
    c, key, store = server["client"], server["keys"]["bob"], server["store"]
    before = store.count_predictions()
    answered = 0
    for name, (blob, expected) in hostile_corpus().items():
        r = _post(c, key, [(name, blob)])
        assert r.status_code in expected, (name, r.status_code, r.text)
        if r.status_code == 200:
            answered += 1
        else:  # one line that names the file
            detail = r.json()["detail"]
            assert name in detail and "\n" not in detail, (name, detail)
        assert c.get("/healthz").status_code == 200
    # oversized body: declared by Content-Length, and streamed without one (chunked)
    big = b"\xff\xd8" + b"\x00" * (MAX_BODY + 10)
    assert _post(c, key, [("big.jpg", big)]).status_code == 413

    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(40):
            yield b"\x00" * 10_000

    r = c.post("/v1/predict", content=chunks(),
               headers={"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413
    too_many = [(f"{i}.jpg", encode(_photo(16, 16), "JPEG")) for i in range(5)]
    assert _post(c, key, too_many).status_code == 413
    assert _post(c, key, []).status_code == 422  # no file field
    # one bad file refuses the whole request: nothing half-stored
    mixed = [("ok.jpg", encode(_photo(), "JPEG")), ("text.jpg", b"hello")]
    assert _post(c, key, mixed).status_code == 415
    assert c.get("/readyz").status_code == 200
    assert store.count_predictions() == before + answered


def test_rate_limit_429(server):
    from sightline.serve.ratelimit import RateLimiter

    c, key = server["client"], server["keys"]["alice"]
    state = server["app"].state.sightline
    original = state.limiter
    state.limiter = RateLimiter(2)
    try:
        image = [("a.jpg", encode(_photo(), "JPEG"))]
        codes = [_post(c, key, image).status_code for _ in range(3)]
        assert codes[:2] == [200, 200] and codes[2] == 429
        assert int(_post(c, key, image).headers["retry-after"]) >= 1
    finally:
        state.limiter = original


def test_concurrent_requests_are_batched_and_all_stored(server):
    c, key, store = server["client"], server["keys"]["alice"], server["store"]
    blobs = [encode(_photo(seed=100 + i), "PNG") for i in range(8)]
    before = store.count_predictions()

    async def fire():
        async with httpx.AsyncClient(base_url=server["url"], timeout=30, verify=tls()) as ac:
            return await asyncio.gather(*(
                ac.post("/v1/predict", files=[("file", (f"c{i}.png", b))], headers={"X-API-Key": key})
                for i, b in enumerate(blobs)
            ))

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 8
    ids = [r.json()["predictions"][0]["id"] for r in responses]
    assert len(set(ids)) == 8 and store.count_predictions() == before + 8
    # the same image answered alone gives the same label and confidence as inside a batch
    alone = _post(c, key, [("c0.png", blobs[0])]).json()["predictions"][0]
    assert alone["confidence"] == pytest.approx(responses[0].json()["predictions"][0]["confidence"], abs=1e-5)


def test_review_queue_and_ground_truth(server):
    c, key = server["client"], server["keys"]["alice"]
    pid = _post(c, key, [("r.jpg", encode(_photo(seed=9), "JPEG"))]).json()["predictions"][0]["id"]
    r = c.get("/v1/review", params={"limit": 500}, headers={"X-API-Key": key})
    queue = r.json()
    assert pid in [item["id"] for item in queue]
    assert int(r.headers["X-Total-Count"]) == len(queue)  # the whole queue fits in one page of 500
    r = c.get("/v1/review", params={"limit": 1, "offset": 1}, headers={"X-API-Key": key})
    assert len(r.json()) <= 1 and int(r.headers["X-Total-Count"]) == len(queue)  # a page of one: the same total
    r = c.get("/v1/review", params={"offset": 10**9}, headers={"X-API-Key": key})
    assert r.json() == [] and int(r.headers["X-Total-Count"]) == len(queue)  # past the end: still the count
    assert c.post(f"/v1/review/{pid}", json={"label": "wolf"}, headers={"X-API-Key": key}).status_code == 422
    assert c.post("/v1/review/999999", json={"label": "dog"}, headers={"X-API-Key": key}).status_code == 404
    r = c.post(f"/v1/review/{pid}", json={"label": "dog"}, headers={"X-API-Key": key})
    assert r.status_code == 200 and r.json()["reviewed_label"] == "dog" and r.json()["reviewer"] == "alice"
    queue = c.get("/v1/review", params={"limit": 500}, headers={"X-API-Key": key}).json()
    assert pid not in [item["id"] for item in queue]
    assert server["store"].get_prediction(pid)["reviewed_label"] == "dog"


def test_graceful_shutdown_answers_and_stores_in_flight_requests(server, monkeypatch):
    from sightline.inference.engine import Engine
    from sightline.serve.app import create_app

    store, key = server["store"], server["keys"]["alice"]
    # inference held until the shutdown has begun keeps the four requests in flight, with no window to time: a
    # 1 s batching window did the same, and every run waited it out
    gate, run = threading.Event(), Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, batch: gate.wait(30) and run(self, batch))
    app = create_app(server["settings"])
    srv, thread, port = start_server(app)
    before = store.count_predictions()
    results: list[int] = []

    def client(i: int) -> None:
        blob = encode(_photo(seed=200 + i), "JPEG")
        with httpx.Client(timeout=30, verify=tls()) as c:
            r = c.post(f"http://127.0.0.1:{port}/v1/predict", files=[("file", (f"s{i}.jpg", blob))],
                       headers={"X-API-Key": key})
            results.append(r.status_code)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    deadline = time.time() + 20
    while app.state.sightline.batcher.pending < 4:  # all four received, in inference or waiting for it
        assert time.time() < deadline, "requests did not reach the batcher"
        time.sleep(0.01)
    srv.should_exit = True  # what uvicorn does on SIGTERM
    while srv.servers[0].is_serving():  # the shutdown has begun: no new connections
        assert time.time() < deadline, "the server did not begin its shutdown"
        time.sleep(0.005)
    assert app.state.sightline.batcher.pending == 4 and not results  # none answered before the shutdown began
    gate.set()
    for w in workers:
        w.join(timeout=30)
    thread.join(timeout=30)
    assert results == [200] * 4 and not thread.is_alive()
    assert store.count_predictions() == before + 4
