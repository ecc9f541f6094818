"""Load test of `sightline serve` against two baselines, each started by this script on 127.0.0.1 only and
loaded for a fixed time, one after another:

- eager: a naive FastAPI + PyTorch eager endpoint (one image per request, no batching, Pillow full-resolution
  decode), the way a first version of a model API is often written;
- onnx: a plain FastAPI endpoint on the *same* ONNX file sightline serves (model.int8.onnx with --int8, else
  model.onnx), written as a competent user would: one image per request, no batching, the same decode and
  preprocessing functions as sightline (`sightline.data.transforms.load_crop` + `normalize`), and an ONNX Runtime
  session with default SessionOptions (all graph optimisations, ORT's default intra-op threads, spinning on).
  Its ratio says what sightline's serving adds (micro-batching, decode threads) beyond the model file itself.

Every side's settings are printed with its figures. sightline also checks an API key and stores every prediction
in SQLite; the baselines do neither.

Targets at 16 concurrent clients: requests/s >= 3x the eager endpoint's, the ratio against the plain ONNX Runtime
endpoint reported beside it, p99 latency reported, 0 errors, 0 predictions missing from the database.

Full run (an exported bundle, e.g. after `sightline export RUN --int8 --data DATA`):
    python benchmarks/serve_load.py --bundle runs/hymenoptera --images /work/shared/data/hymenoptera/test --clients 16 --duration 30 --int8
Quick check that it runs:
    python benchmarks/serve_load.py --trial --images /work/shared/data/hymenoptera/test --quick
"""
# no `from __future__ import annotations`: FastAPI must resolve the endpoints' UploadFile annotations, which are
# imported inside the app factories.
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

sys.path.insert(0, str(Path(__file__).parent))
from common import copy_bundle, print_targets, stop_process


# ---- baseline 1: a naive endpoint, PyTorch eager, one image per request ---------------------------------
def eager_app(bundle_path: str, *, channels_last: bool = False):
    import torch

    from sightline.bundle import load_bundle
    from sightline.data.images import load_image
    from sightline.data.transforms import eval_preprocess

    bundle = load_bundle(bundle_path)
    model = bundle.load_model().eval()
    if channels_last:  # PyTorch's Performance Tuning Guide: channels-last for convolutional networks
        model = model.to(memory_format=torch.channels_last)
    settings = (f"FastAPI sync endpoint (Starlette thread pool), one image per request, no batching; PyTorch eager "
                f"fp32, {'channels-last' if channels_last else 'NCHW (contiguous, no channels-last)'}, "
                f"torch.inference_mode, {torch.get_num_threads()} intra-op threads; Pillow full-resolution decode "
                "(no JPEG draft) + sightline eval_preprocess; no API key, no database")

    def probabilities(data: bytes, filename: str | None):
        x = torch.from_numpy(eval_preprocess(load_image(data), bundle.preprocessing))[None]
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            return torch.softmax(model(x), 1)[0]

    return plain_app(bundle.classes, probabilities, settings)


# ---- baseline 2: the same ONNX file behind a plain endpoint, one image per request ----------------------
def onnx_app(bundle_path: str, *, int8: bool):
    import onnxruntime as ort

    from sightline.bundle import load_bundle
    from sightline.data.transforms import load_crop, normalize
    from sightline.decision import softmax

    bundle = load_bundle(bundle_path)
    path = bundle.int8_path if int8 else bundle.onnx_path
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), providers=providers)  # default SessionOptions
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name  # logits
    options = session.get_session_options()
    settings = (f"FastAPI sync endpoint (Starlette thread pool), one image per request, no batching; ONNX Runtime "
                f"{ort.__version__} on {path.name}, {', '.join(session.get_providers())}, default SessionOptions "
                f"(graph optimisation level {options.graph_optimization_level.name}, intra-op threads "
                f"{options.intra_op_num_threads} = ORT's default, one per physical core; spinning on), only the "
                "logits fetched; sightline.data.transforms.load_crop + normalize (JPEG draft decode); no API key, "
                "no database")

    def probabilities(data: bytes, filename: str | None):
        x = normalize(load_crop(data, bundle.preprocessing, name=filename), bundle.preprocessing)[None]
        return softmax(session.run([output_name], {input_name: x})[0], bundle.temperature)[0]

    return plain_app(bundle.classes, probabilities, settings)


def plain_app(classes: list[str], probabilities, settings: str):
    """The baselines' FastAPI app: a sync POST /predict (FastAPI runs it in its thread pool), one image per request,
    answered with the top class of `probabilities(bytes, filename)` (a SightlineError -> its HTTP status), and
    GET /healthz with `settings`."""
    from fastapi import FastAPI, File, HTTPException, UploadFile

    from sightline.errors import SightlineError

    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:
        try:
            probs = probabilities(file.file.read(), file.filename)
        except SightlineError as exc:
            raise HTTPException(exc.status_code, str(exc)) from None
        i = int(probs.argmax())
        return {"label": classes[i], "confidence": float(probs[i])}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "settings": settings}

    return app


def sightline_settings(int8: bool) -> str:
    from sightline.inference import usable_cores
    from sightline.serve.settings import Settings

    d = {name: f.default for name, f in Settings.model_fields.items()}
    cores = usable_cores()
    return (f"`sightline serve{' --int8' if int8 else ''}`: one uvicorn process, requests micro-batched (at most "
            f"{d['batch_max_size']} images, first image waits at most {d['batch_max_wait_ms']} ms); ONNX Runtime "
            f"{'int8' if int8 else 'fp32'}, all graph optimisations, {d['threads'] or cores} intra-op threads, "
            f"spinning off; decode (JPEG draft) on {d['decode_threads'] or cores} threads; API key checked; every "
            "prediction stored in SQLite")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> dict:
    """Poll `url` until it answers 200; its JSON body (the baselines put their settings there)."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r.json()
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


def run_baseline(kind: str, folder: Path, args: argparse.Namespace, images: list[tuple[str, bytes]],
                 procs: list[subprocess.Popen]) -> dict:
    """Start baseline `kind` ("eager" or "onnx") in a child process, warm it up, load it, stop it."""
    port = free_port()
    cmd = [sys.executable, __file__, "--baseline-server", kind, "--bundle", str(folder), "--port", str(port),
           "--images", str(args.images)]
    cmd += ["--int8"] if args.int8 else []
    cmd += ["--eager-channels-last"] if args.eager_channels_last else []
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    base = f"http://127.0.0.1:{port}"
    settings = wait_ready(f"{base}/healthz", procs[-1])["settings"]
    asyncio.run(load(f"{base}/predict", images[:8], clients=2, duration=1.0, headers={}))
    result = asyncio.run(load(f"{base}/predict", images, clients=args.clients, duration=args.duration, headers={}))
    result["settings"] = settings
    procs[-1].terminate()
    procs[-1].wait(timeout=60)
    return result


def ratio(s: dict, baseline: dict) -> float | str:
    if not baseline["ok"] or baseline["errors"]:
        return f"baseline failed: {baseline['first_errors']}"
    return round(s["requests_per_s"] / baseline["requests_per_s"], 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="exported RUN or bundle folder (copied; not modified)")
    ap.add_argument("--trial", action="store_true", help="Lite0 ImageNet backbone + untrained head (speed only)")
    ap.add_argument("--images", type=Path, required=True, help="folder of images to send")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per server")
    ap.add_argument("--int8", action="store_true", help="serve model.int8.onnx (sightline and the ONNX baseline)")
    ap.add_argument("--eager-channels-last", action="store_true",
                    help="run the eager baseline channels-last, as PyTorch's Performance Tuning Guide advises")
    ap.add_argument("--quick", action="store_true", help="4 clients, 5 s each")
    ap.add_argument("--baseline-server", choices=("eager", "onnx"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.baseline_server:  # child process: one baseline endpoint
        import uvicorn

        app = (eager_app(str(args.bundle), channels_last=args.eager_channels_last) if args.baseline_server == "eager"
               else onnx_app(str(args.bundle), int8=args.int8))
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return 0
    if not (args.bundle or args.trial):
        ap.error("pass --bundle BUNDLE or --trial")
    if args.trial and args.int8:
        ap.error("--int8 needs calibration images: export a trained bundle with `sightline export RUN --int8 "
                 "--data DATA` and pass --bundle RUN")
    if args.quick:
        args.clients, args.duration = 4, 5.0

    from sightline.data.inputs import expand_inputs
    from sightline.storage.store import Store

    work = Path(tempfile.mkdtemp(prefix="sightline-serve-load-"))
    procs: list[subprocess.Popen] = []
    try:
        folder = work / "bundle"
        bundle = copy_bundle(args.bundle, folder, trial=args.trial)
        if args.int8 and not bundle.int8_path.is_file():
            ap.error(f"{args.bundle} has no model.int8.onnx; run `sightline export {args.bundle} --int8 --data DATA`")
        files = expand_inputs([str(args.images)])[:200]
        if not files:
            ap.error(f"--images {args.images} holds no image files")
        images = [(f.name, f.read_bytes()) for f in files]
        db_url = f"sqlite:///{work / 'load.db'}"
        key = Store(db_url).create_key("load-test")
        env = {**os.environ, "SIGHTLINE_DATABASE_URL": db_url, "SIGHTLINE_RATE_LIMIT_PER_MINUTE": "0",
               "SIGHTLINE_MAX_IMAGES_PER_REQUEST": "16"}
        results = {}
        load_at_start = [round(x, 2) for x in os.getloadavg()]  # figures from a busy machine are pessimistic

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
        results["sightline"]["settings"] = sightline_settings(args.int8)
        procs[-1].terminate()  # SIGTERM: graceful shutdown
        procs[-1].wait(timeout=60)

        results["eager"] = run_baseline("eager", folder, args, images, procs)
        results["onnx"] = run_baseline("onnx", folder, args, images, procs)
        s = results["sightline"]
        vs_eager, vs_onnx = ratio(s, results["eager"]), ratio(s, results["onnx"])
        model_file = bundle.int8_path.name if args.int8 else bundle.onnx_path.name
        results["targets"] = {
            "rps_ratio_vs_eager": {"value": vs_eager, "target": ">= 3.0",
                                   "pass": isinstance(vs_eager, float) and vs_eager >= 3.0},
            f"rps_ratio_vs_plain_onnx_runtime_on_{model_file}": {"value": vs_onnx, "target": "reported",
                                                                 "pass": isinstance(vs_onnx, float)},
            "errors": {"value": s["errors"], "target": "0", "pass": s["errors"] == 0},
            "missing_from_db": {"value": s["missing_from_db"], "target": "0", "pass": s["missing_from_db"] == 0},
            "p99_ms": {"value": s["p99_ms"], "target": "reported", "pass": True},
        }
        results["settings"] = {"clients": args.clients, "duration_s": args.duration, "int8": args.int8,
                               "model_file": model_file, "architecture": bundle.architecture,
                               "input_size": bundle.preprocessing.input_size, "images": len(images),
                               "image_source": str(args.images), "cpus": os.cpu_count(),
                               "load_average_1_5_15": {"start": load_at_start,
                                                       "end": [round(x, 2) for x in os.getloadavg()]}}
        print(json.dumps(results, indent=2))
        print(f"{'server':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}", file=sys.stderr)
        for name in ("sightline", "eager", "onnx"):
            r = results[name]
            print(f"{name:<10}{r['requests_per_s']:>9.1f}{r['p50_ms'] or float('nan'):>9.1f}"
                  f"{r['p99_ms'] or float('nan'):>9.1f}{r['errors']:>8}", file=sys.stderr)
        for name in ("sightline", "eager", "onnx"):
            print(f"{name}: {results[name]['settings']}", file=sys.stderr)
        print_targets(results["targets"])
        return 0
    finally:
        for p in procs:
            stop_process(p, timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
