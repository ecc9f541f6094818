"""Load test of `sightline serve` against a naive endpoint (FastAPI + PyTorch eager, one image per request, no
batching), both started by this script on 127.0.0.1 only, each for a fixed time.

Targets at 16 concurrent clients: requests/s >= 3x the naive endpoint's, p99 latency reported, 0 errors,
0 predictions missing from the database.

Full run (an exported bundle, e.g. after `sightline export RUN --int8 --data DATA`):
    python benchmarks/serve_load.py --bundle runs/hymenoptera --images /work/shared/data/hymenoptera/test --clients 16 --duration 30
Add --int8 to serve model.int8.onnx. Quick check that it runs:
    python benchmarks/serve_load.py --trial --images /work/shared/data/hymenoptera/test --quick
"""
# no `from __future__ import annotations`: FastAPI must resolve the naive endpoint's UploadFile annotation,
# which is imported inside naive_app().
import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# ---- the naive baseline: one image per request, PyTorch eager, no batching ---------------------------------
def naive_app(bundle_path: str):
    import torch
    from fastapi import FastAPI, File, HTTPException, UploadFile

    from sightline.bundle import load_bundle
    from sightline.data.images import load_image
    from sightline.data.transforms import eval_preprocess
    from sightline.errors import SightlineError

    bundle = load_bundle(bundle_path)
    model = bundle.load_model()
    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:  # sync: FastAPI runs it in its thread pool
        try:
            x = eval_preprocess(load_image(file.file.read()), bundle.preprocessing)
        except SightlineError as exc:
            raise HTTPException(exc.status_code, str(exc)) from None
        with torch.inference_mode():
            probs = torch.softmax(model(torch.from_numpy(x)[None]), 1)[0]
        i = int(probs.argmax())
        return {"label": bundle.classes[i], "confidence": float(probs[i])}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


async def load(url: str, images: list[tuple[str, bytes]], *, clients: int, duration: float, headers: dict) -> dict:
    """`clients` workers post one image at a time for `duration` seconds; latency per request."""
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < deadline:
            name, blob = images[i % len(images)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = await client.post(url, files=[("file", (name, blob))], headers=headers)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors.append(f"{r.status_code}: {r.text[:120]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(k, client) for k in range(clients)))
    wall = time.perf_counter() - started
    lat = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "ok": len(latencies),
        "statuses": statuses,
        "errors": len(errors),
        "first_errors": errors[:3],
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="exported RUN or bundle folder (copied; not modified)")
    ap.add_argument("--trial", action="store_true", help="Lite0 ImageNet backbone + untrained head (speed only)")
    ap.add_argument("--images", type=Path, required=True, help="folder of images to send")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per server")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--quick", action="store_true", help="4 clients, 5 s each")
    ap.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.naive_server:  # child process: the baseline endpoint
        import uvicorn

        uvicorn.run(naive_app(str(args.bundle)), host="127.0.0.1", port=args.port, log_level="warning")
        return 0
    if not (args.bundle or args.trial):
        ap.error("pass --bundle BUNDLE or --trial")
    if args.quick:
        args.clients, args.duration = 4, 5.0

    from sightline._cli.optimize import expand_inputs
    from sightline.bundle import load_bundle, resolve_bundle_dir
    from sightline.serve.store import Store

    work = Path(tempfile.mkdtemp(prefix="sightline-serve-load-"))
    procs: list[subprocess.Popen] = []
    try:
        folder = work / "bundle"
        if args.trial:
            sys.path.insert(0, str(Path(__file__).parent))
            from export_bench import trial_bundle

            trial_bundle(folder, ["ants", "bees"])
        else:
            shutil.copytree(resolve_bundle_dir(args.bundle), folder, ignore=shutil.ignore_patterns("sightline.db*"))
        bundle = load_bundle(folder)
        if not bundle.onnx_path.is_file():
            from sightline.optimize.export import export

            export(folder)
        files = expand_inputs([str(args.images)])[:200]
        images = [(f.name, f.read_bytes()) for f in files]
        db_url = f"sqlite:///{work / 'load.db'}"
        key = Store(db_url).create_key("load-test")
        env = {**os.environ, "SIGHTLINE_DATABASE_URL": db_url, "SIGHTLINE_RATE_LIMIT_PER_MINUTE": "0",
               "SIGHTLINE_MAX_IMAGES_PER_REQUEST": "16"}
        results = {}

        port = free_port()
        cmd = [sys.executable, "-m", "sightline.cli", "serve", str(folder), "--port", str(port)]
        if args.int8:
            cmd.append("--int8")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(f"http://127.0.0.1:{port}/readyz", procs[-1])
        base = f"http://127.0.0.1:{port}"
        asyncio.run(load(f"{base}/v1/predict", images[:8], clients=2, duration=1.0, headers={"X-API-Key": key}))
        before = Store(db_url).count_predictions()
        results["sightline"] = asyncio.run(
            load(f"{base}/v1/predict", images, clients=args.clients, duration=args.duration, headers={"X-API-Key": key})
        )
        stored = Store(db_url).count_predictions() - before
        results["sightline"]["stored_in_db"] = stored
        results["sightline"]["missing_from_db"] = results["sightline"]["ok"] - stored
        procs[-1].terminate()  # SIGTERM: graceful shutdown
        procs[-1].wait(timeout=60)

        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--naive-server", "--bundle", str(folder), "--port", str(port),
             "--images", str(args.images)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_ready(f"http://127.0.0.1:{port}/healthz", procs[-1])
        asyncio.run(load(f"http://127.0.0.1:{port}/predict", images[:8], clients=2, duration=1.0, headers={}))
        results["naive"] = asyncio.run(
            load(f"http://127.0.0.1:{port}/predict", images, clients=args.clients, duration=args.duration, headers={})
        )
        s, n = results["sightline"], results["naive"]
        ratio = s["requests_per_s"] / n["requests_per_s"] if n["ok"] and not n["errors"] else None
        results["targets"] = {
            "rps_ratio": {"value": round(ratio, 2) if ratio else f"naive endpoint failed: {n['first_errors']}",
                          "target": ">= 3.0", "pass": bool(ratio and ratio >= 3.0)},
            "errors": {"value": s["errors"], "target": "0", "pass": s["errors"] == 0},
            "missing_from_db": {"value": s["missing_from_db"], "target": "0", "pass": s["missing_from_db"] == 0},
            "p99_ms": {"value": s["p99_ms"], "target": "reported", "pass": True},
        }
        results["settings"] = {"clients": args.clients, "duration_s": args.duration, "int8": args.int8,
                               "architecture": bundle.architecture, "input_size": bundle.preprocessing.input_size,
                               "images": len(images), "cpus": os.cpu_count()}
        print(json.dumps(results, indent=2))
        for name, t in results["targets"].items():
            print(f"{'PASS' if t['pass'] else 'FAIL'} {name}: {t['value']} (target {t['target']})", file=sys.stderr)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
