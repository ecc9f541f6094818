"""What monitoring costs `sightline serve`: requests/s at 16 concurrent clients with monitoring on and with
SIGHTLINE_MONITOR=false, the same bundle (with its reference profile), the same images, the same settings.

Monitoring on adds, per image: image statistics in the decode thread (one greyscale conversion and downscale of
the decoded image, its header read again), the profile's chosen open-set score and the PCA projection of the
features after the forward pass, and a prediction_signals row in the prediction's transaction; in the background
the monitor tests its windows every SIGHTLINE_MONITOR_EVERY predictions (default 500), as in production.

The two modes alternate (on/off, then off/on, ...) so that a slow spell of a shared machine does not land on one
side only; each run gets a fresh SQLite database. Every server is started by this script on 127.0.0.1 only.
Besides requests/s, the server process's CPU time per answered request is reported (user + system, all threads,
from /proc): on a machine shared with other work, throughput follows the share of CPU the server gets, while the
CPU cost of a request does not, so off/on of it is the capacity ratio a machine of its own would show.
Target: requests/s with monitoring >= 0.9 x without, 0 errors, a signals row for every answer.

Full run on real photos (a trained RUN with reference.npz, or --trial: Lite0 ImageNet backbone + untrained head,
its profile built here from --data through `sightline.evaluate.reference.build_bundle_reference`):
    python benchmarks/monitor_overhead.py --trial --data /work/shared/data/hymenoptera --clients 16 --duration 30
Quick check that it runs:
    python benchmarks/monitor_overhead.py --trial --data /work/shared/data/hymenoptera --quick
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import copy_bundle, print_targets
from serve_load import free_port, load, wait_ready  # noqa: E402 - the load generator of the serving benchmark


def prepare_bundle(args: argparse.Namespace, folder: Path) -> dict:
    """Copy (or make) the bundle, export it, make sure it has a reference profile; what was done."""
    from sightline.monitor.reference import load_reference

    copy_bundle(args.bundle, folder, trial=args.trial)
    notes = {"bundle": str(args.bundle) if args.bundle else "trial: tf_efficientnet_lite0 ImageNet + untrained head"}
    if load_reference(folder) is None:
        if args.data is None:
            raise SystemExit(f"{folder} has no reference.npz: pass --data DATA (split layout) to build one")
        from sightline.evaluate.reference import build_bundle_reference

        t0 = time.perf_counter()
        build_bundle_reference(folder, args.data, bank_images=args.bank_images)
        notes["reference"] = f"built from {args.data} val (+ train bank <= {args.bank_images}) in " \
                             f"{time.perf_counter() - t0:.0f} s"
    return {**notes, **describe_prepared(folder, notes.get("reference", "the bundle's own"))}


def describe_prepared(folder: Path, reference: str) -> dict:
    from sightline.monitor.reference import load_reference

    profile = load_reference(folder)
    notes = {"reference": reference}
    notes["open_set_score"] = profile.ood_choice.score if profile.ood_choice else None
    notes["bank"] = 0 if profile.bank is None else int(profile.bank.shape[0])
    notes["feature_dim"] = int(profile.pca_mean.shape[0])
    notes["projected_dim"] = int(profile.pca_components.shape[1])
    return notes


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _signal_count(store) -> int:
    import sqlalchemy as sa

    from sightline.storage.store import PredictionSignal

    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(PredictionSignal)).scalar() or 0)


def run_server(folder: Path, work: Path, images: list[tuple[str, bytes]], args: argparse.Namespace, *,
               monitor: bool, tag: str) -> dict:
    """Start `sightline serve` (monitoring on or off), warm it up, load it, stop it; its figures."""
    from sightline.storage.store import Store

    db_url = f"sqlite:///{work / f'{tag}.db'}"
    store = Store(db_url)
    key = store.create_key("load-test", ["predict", "review"])  # review: it reads /v1/monitor
    env = {**os.environ, "SIGHTLINE_DATABASE_URL": db_url, "SIGHTLINE_RATE_LIMIT_PER_MINUTE": "0",
           "SIGHTLINE_MONITOR": "true" if monitor else "false"}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sightline.cli", "serve", str(folder), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/readyz", proc)
        headers = {"X-API-Key": key}
        asyncio.run(load(f"{base}/v1/predict", images[:8], clients=2, duration=1.0, headers=headers))
        before = store.count_predictions()
        signals_before = _signal_count(store)
        cpu_before = _cpu_seconds(proc.pid)
        result = asyncio.run(load(f"{base}/v1/predict", images, clients=args.clients, duration=args.duration,
                                  headers=headers))
        # CPU time per answer does not depend on how much of a shared machine the server got
        result["server_cpu_ms_per_request"] = round((_cpu_seconds(proc.pid) - cpu_before) * 1000
                                                    / max(result["ok"], 1), 2)
        time.sleep(0.5)
        result["stored_in_db"] = store.count_predictions() - before
        result["signal_rows"] = _signal_count(store) - signals_before
        import httpx

        status = httpx.get(f"{base}/v1/monitor", headers=headers, timeout=30).json()
        result["monitor_enabled"] = status["enabled"]
        result["windows_tested"] = sorted(status.get("windows", {}))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        store.close()
    result["monitor"] = monitor
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="exported RUN or bundle folder (copied; not modified)")
    ap.add_argument("--trial", action="store_true", help="Lite0 ImageNet backbone + untrained head")
    ap.add_argument("--data", type=Path, help="dataset (split layout) for the reference profile when the bundle "
                                              "has none; its test/ (else val/) images are sent")
    ap.add_argument("--images", type=Path, help="folder of images to send (default DATA/test)")
    ap.add_argument("--bank-images", type=int, default=5000, help="training images in the profile's k-NN bank")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=2, help="on/off pairs, alternating which goes first")
    ap.add_argument("--quick", action="store_true", help="4 clients, 5 s per run, 1 round")
    ap.add_argument("--keep", type=Path, help="prepare the bundle (export, profile) in this folder and reuse it "
                                              "on the next run instead of a temporary copy")
    args = ap.parse_args()
    if not (args.bundle or args.trial):
        ap.error("pass --bundle BUNDLE or --trial")
    if args.quick:
        args.clients, args.duration, args.rounds = 4, 5.0, 1

    from sightline.data.inputs import expand_inputs

    source = args.images or (args.data / "test" if args.data and (args.data / "test").is_dir() else args.data)
    if source is None:
        ap.error("pass --images DIR (or --data DATA)")
    files = expand_inputs([str(source)])[:200]
    if not files:
        ap.error(f"{source} holds no image files")
    images = [(f.name, f.read_bytes()) for f in files]
    work = Path(tempfile.mkdtemp(prefix="sightline-monitor-overhead-"))
    try:
        folder = args.keep / "bundle" if args.keep else work / "bundle"
        if args.keep and (folder / "model.json").is_file():
            notes = {"bundle": f"prepared earlier in {folder} (--keep)",
                     **describe_prepared(folder, "the prepared bundle's")}
        else:
            notes = prepare_bundle(args, folder)
        runs = []
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for monitor in order:
                runs.append(run_server(folder, work, images, args, monitor=monitor, tag=f"r{r}-{int(monitor)}"))
                print(f"round {r + 1} monitor {'on ' if monitor else 'off'}: {runs[-1]['requests_per_s']:.1f} req/s "
                      f"p99 {runs[-1]['p99_ms']} ms, server CPU {runs[-1]['server_cpu_ms_per_request']} ms/request, "
                      f"errors {runs[-1]['errors']}", file=sys.stderr)
        on = [x for x in runs if x["monitor"]]
        off = [x for x in runs if not x["monitor"]]
        rps_on = sum(x["requests_per_s"] for x in on) / len(on)
        rps_off = sum(x["requests_per_s"] for x in off) / len(off)
        ratio = round(rps_on / rps_off, 3) if rps_off else None
        missing = sum(x["ok"] - x["signal_rows"] for x in on)
        cpu_on = sum(x["server_cpu_ms_per_request"] for x in on) / len(on)
        cpu_off = sum(x["server_cpu_ms_per_request"] for x in off) / len(off)
        cpu_ratio = round(cpu_off / cpu_on, 3) if cpu_on else None
        result = {
            "runs": runs,
            "requests_per_s": {"monitor_on": round(rps_on, 2), "monitor_off": round(rps_off, 2)},
            "server_cpu_ms_per_request": {"monitor_on": round(cpu_on, 2), "monitor_off": round(cpu_off, 2)},
            "targets": {
                "ratio_on_vs_off": {"value": ratio, "target": ">= 0.9", "pass": ratio is not None and ratio >= 0.9},
                "cpu_per_request_ratio_off_vs_on": {
                    "value": cpu_ratio, "target": ">= 0.9 (capacity ratio on a machine of its own)",
                    "pass": cpu_ratio is not None and cpu_ratio >= 0.9},
                "errors": {"value": sum(x["errors"] for x in runs), "target": "0",
                           "pass": all(x["errors"] == 0 for x in runs)},
                "answers_without_signals_row": {"value": missing, "target": "0 (monitor on); no rows when off",
                                                "pass": missing == 0 and all(x["signal_rows"] == 0 for x in off)},
            },
            "settings": {**notes, "clients": args.clients, "duration_s": args.duration, "rounds": args.rounds,
                         "images": len(images), "image_source": str(source), "cpus": os.cpu_count(),
                         "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
                         "server": "`sightline serve` (onnx fp32, micro-batching, API key, SQLite), "
                                   "SIGHTLINE_MONITOR=true|false, monitor every 500 predictions"},
        }
        print(json.dumps(result, indent=2))
        print_targets(result["targets"])
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
